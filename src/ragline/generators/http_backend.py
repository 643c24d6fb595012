"""Generation through any OpenAI-compatible server (``vllm serve``, llama.cpp's
server, a hosted API): ``POST {url}/chat/completions``.

Connection failures, timeouts, 429 and 5xx answers are retried with
exponential backoff; other HTTP errors are reported at once with the server's
message. A batch is sent as concurrent requests: the server does the batching.
The API key, if any, comes from the environment variable named by ``api_key_env``.

``answer_nll`` keeps the default (None: ``eval qa`` reports n/a): the
OpenAI chat API returns log-probabilities of generated tokens only, not of a
given answer; scoring one needs prompt log-probabilities, which only some
servers (vLLM's ``prompt_logprobs`` extension) offer.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from ragline.engine.errors import RaglineError
from ragline.engine.settings import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from ragline.generators.backend import Conversation, Generation, GeneratorBackend, Sampling, cut_at_stop

log = logging.getLogger(__name__)

_RETRIED_STATUS = {408, 429, 500, 502, 503, 504}


class ServerUnreachable(RaglineError):
    """The generation server did not answer after every retry."""


class HTTPGenerator(GeneratorBackend):
    backend = "http"

    def __init__(self, model: str, url: str = "http://localhost:8000/v1", timeout: PositiveFloat = 60.0,
                 retries: NonNegativeInt = 3, backoff: NonNegativeFloat = 0.5, concurrency: PositiveInt = 4,
                 api_key_env: str = "RAGLINE_API_KEY"):
        self.model = model
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.concurrency = concurrency
        self.api_key_env = api_key_env

    def generate(self, conversations: Sequence[Conversation], sampling: Sampling) -> list[Generation]:
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(conversations)))) as pool:
            return list(pool.map(lambda c: self.generate_one(c, sampling), conversations))

    def generate_one(self, conversation: Conversation, sampling: Sampling,
                     on_text: Callable[[str], None] | None = None) -> Generation:
        started = time.perf_counter()
        body = self._body(conversation, sampling, stream=on_text is not None)
        if on_text is None:
            reply = json.loads(self._post(body, lambda response: response.read()))
            try:
                text = reply["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                raise RaglineError(f"{self.url} answered without choices[0].message.content: {str(reply)[:200]}") from None
            usage = reply.get("usage") or {}
            seconds = time.perf_counter() - started
            # Without streaming the first token is seen with the last.
            return Generation(cut_at_stop(text, sampling.stop).strip(), usage.get("prompt_tokens"),
                              usage.get("completion_tokens"), seconds, seconds)
        pieces: list[str] = []
        first: list[float] = []

        def consume(response) -> None:
            try:
                for piece in _server_sent_text(response):
                    if not first:
                        first.append(time.perf_counter())
                    pieces.append(piece)
                    on_text(piece)
            except (OSError, TimeoutError) as err:
                if not pieces:
                    raise  # nothing shown yet: the request may be retried
                # Text already went to the caller; a retry would show it twice.
                raise RaglineError(f"the answer stream from {self.url} broke after {len(pieces)} pieces: "
                                   f"{err}") from None

        self._post(body, consume)
        seconds = time.perf_counter() - started
        return Generation(cut_at_stop("".join(pieces), sampling.stop).strip(), None, None,
                          (first[0] - started) if first else None, seconds)

    def _body(self, conversation: Conversation, sampling: Sampling, stream: bool) -> bytes:
        body = {"model": self.model, "messages": conversation, "max_tokens": sampling.max_new_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "seed": sampling.seed,
                "stream": stream}
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        return json.dumps(body).encode()

    def _post(self, body: bytes, read):
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        endpoint = f"{self.url}/chat/completions"
        last_problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return read(response)
            except urllib.error.HTTPError as err:
                detail = err.read().decode("utf-8", "replace")[:300]
                if err.code not in _RETRIED_STATUS:
                    raise RaglineError(f"{endpoint} refused the request: HTTP {err.code}: {detail}") from None
                last_problem = f"HTTP {err.code}: {detail}"
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as err:
                last_problem = str(getattr(err, "reason", err))
            if attempt < self.retries:
                log.warning("%s: %s; retrying (%d of %d)", endpoint, last_problem, attempt + 1, self.retries)
        raise ServerUnreachable(
            f"cannot reach the generation server at {endpoint} after {self.retries + 1} attempts "
            f"({last_problem}); is it running? (e.g. `vllm serve MODEL`, then --url http://HOST:PORT/v1)"
        )


def _server_sent_text(response) -> Iterator[str]:
    """Text deltas of an OpenAI-style server-sent event stream."""
    for raw in response:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            return
        try:
            delta = json.loads(data)["choices"][0].get("delta", {})
        except (ValueError, KeyError, IndexError, TypeError):
            continue
        if delta.get("content"):
            yield delta["content"]
