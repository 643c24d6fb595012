"""How the server batches and what it accepts: every limit has a safe
default and a command-line option."""

from __future__ import annotations

from dataclasses import dataclass

from ragline.engine.errors import ConfigError


@dataclass(frozen=True)
class ServeSettings:
    #: How long the first request of a batch waits for others to join it.
    #: Requests that arrive while the pipeline is busy join the next batch
    #: anyway; 0 only stops the server from waiting for more.
    batch_wait_ms: float = 5.0
    #: The most requests one pipeline batch holds; 1 turns batching off.
    max_batch: int = 64
    #: Requests waiting per pipeline (not counting the batch running); more → 429.
    max_queue: int = 256
    #: Seconds a request may take from arrival to its last byte; more → 504.
    request_timeout_s: float = 60.0
    max_body_bytes: int = 1 << 20
    max_question_chars: int = 4000
    max_k: int = 100
    max_queries: int = 64  # per /v1/search request
    max_tokens: int = 1024  # a request's max_tokens cap
    max_messages: int = 256  # per chat completion
    #: On SIGTERM: how long requests in flight may take to finish.
    shutdown_timeout_s: float = 30.0
    #: Bearer token every /v1 route and /metrics require; None: no auth.
    api_key: str | None = None
    #: Serve /docs and /openapi.json (behind the token when there is one).
    docs: bool = False
    #: Host header values answered (a name or an address, any port): anything
    #: else is refused, so a web page cannot reach a local server by DNS rebinding.
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

    def __post_init__(self):
        positive = {name: getattr(self, name) for name in (
            "max_batch", "max_queue", "request_timeout_s", "max_body_bytes", "max_question_chars",
            "max_k", "max_queries", "max_tokens", "max_messages")}
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be > 0 (got {value})")
        if self.batch_wait_ms < 0 or self.shutdown_timeout_s < 0:
            raise ConfigError("batch_wait_ms and shutdown_timeout_s must be >= 0")
