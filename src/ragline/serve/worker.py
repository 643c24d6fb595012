"""The thread where all model work of the served pipelines runs.

Stages are not known to be safe to run twice at once (a searcher, a model
shared through the model cache, a KV store), and the engine is batch-first
anyway: one thread that runs whole batches, one after another, keeps the
event loop free and the stages single-threaded. The thread is a daemon, so a batch that never
returns cannot keep the process alive after shutdown has given up on it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

log = logging.getLogger(__name__)

_STOP = object()


class Worker:
    def __init__(self, name: str):
        self.name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run_jobs, name=f"ragline-serve-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        """Run ``function(*args)`` on the thread, after the jobs already given."""
        future: Future = Future()
        self._jobs.put((future, function, args))
        return future

    def stop(self, timeout: float | None = None) -> bool:
        """Finish the jobs already given, then end the thread; False if it
        was still busy after ``timeout`` seconds."""
        if not self._thread.is_alive():
            return True
        self._jobs.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("%s: the worker is still busy after %.0f s; leaving it behind", self.name, timeout)
            return False
        return True

    def _run_jobs(self) -> None:
        while (job := self._jobs.get()) is not _STOP:
            future, function, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(*args))
            except BaseException as error:  # handed to whoever waits for it; the thread lives on
                future.set_exception(error)
