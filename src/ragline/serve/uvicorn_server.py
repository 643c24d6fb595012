"""``ragline serve``: load the pipelines, build the app, run it on uvicorn
until SIGTERM or Ctrl-C, and stop gracefully.

uvicorn's own shutdown does the graceful part: it stops accepting, lets the
requests in flight finish and runs the app's lifespan end. The app bounds it:
``--shutdown-timeout`` after the signal, whatever is still waiting or running
is answered with a JSON 503 carrying its request id (a stream, with an
``error`` event) rather than cut off. Then uvicorn re-raises the signal that
stopped it for the handler installed before it ran; the command's usual
SIGTERM handler would turn that into an "interrupted" exit, so while serving
both signals are received by a handler that does nothing: a graceful stop
exits 0. A worker still inside model code at that point cannot be stopped
from Python; the process then ends without running the interpreter's
teardown (which would abort on torch's running threads, exit 134), still 0.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ragline.engine import terminal
from ragline.engine.errors import ConfigError, RaglineError
from ragline.engine.pipeline import Pipeline
from ragline.serve.app import create_app
from ragline.serve.settings import ServeSettings

log = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
#: uvicorn's own bound, over the app's: the app has its requests finish
#: within ``shutdown_timeout_s``; uvicorn gives up a little later.
SHUTDOWN_MARGIN_S = 5.0


def load_pipelines(specs: Sequence[str], index: str | None = None, ray: str | None = None) -> dict[str, Pipeline]:
    """``FILE`` (named after the file's stem) or ``NAME=FILE``; stages that
    read an index and name none read ``index``; retrievers of a sharded index
    that name no Ray address search its shards on ``ray``."""
    defaults = {key: value for key, value in (("index", index), ("ray", ray)) if value is not None}
    pipelines: dict[str, Pipeline] = {}
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec and not Path(spec).exists() else (Path(spec).stem, "", spec)
        if name in pipelines:
            raise ConfigError(f"two pipelines are named {name!r}; name them with NAME=FILE")
        pipelines[name] = Pipeline.load(path, defaults=defaults or None)
    if not pipelines:
        raise ConfigError("nothing to serve: give at least one --pipeline FILE")
    return pipelines


def api_key_from(variable: str | None) -> str | None:
    if variable is None:
        return None
    key = os.environ.get(variable, "").strip()
    if not key:
        raise RaglineError(f"--api-key-env {variable}: that environment variable is not set or empty")
    return key


def serve(pipelines: dict[str, Pipeline], settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000,
          access_log: bool = False) -> None:
    import uvicorn

    if host not in LOCAL_HOSTS and settings.api_key is None:
        log.warning("serving on %s without --api-key-env: anyone who can reach this machine may use it", host)
    console = terminal.stderr()
    failures: list[BaseException] = []

    def stop_on_failure(error: BaseException) -> None:
        failures.append(error)
        server.should_exit = True

    def say_ready() -> None:
        console.print(f"[green]ready[/]: {', '.join(pipelines)} on http://{host}:{port}", highlight=False)

    app = create_app(pipelines, settings, on_ready=say_ready, on_warm_up_failure=stop_on_failure)
    state = app.state.ragline

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # the signal handler, on the event loop's thread
            if not self.should_exit:
                state.begin_shutdown()
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(
        app, host=host, port=port, access_log=access_log, log_level="info",
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s + SHUTDOWN_MARGIN_S)))
    console.print(f"warming up {', '.join(pipelines)} (GET /healthz says 503 until ready)", highlight=False)
    with _signals_end_the_server_only():
        server.run()
    if failures:
        error = failures[0]
        raise error if isinstance(error, RaglineError) else RaglineError(f"warming up failed: {error}")
    if state.worker_left_behind:
        log.warning("the model worker is still busy; ending the process without waiting for it")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@contextmanager
def _signals_end_the_server_only() -> Iterator[None]:
    def served(signum, frame) -> None:
        log.info("stopped by signal %d after a graceful shutdown", signum)

    previous = {sig: signal.signal(sig, served) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
