"""What one app serves: its pipelines (each with its batcher, all on one
worker thread), its settings and metrics, and whether it is ready.

Warm-up runs in the background once the server listens, so ``/healthz``
can say 503 until every stage is loaded; then pipelines whose generators
use the same model (and device and dtype) are given one passage KV store,
so a passage prefilled for one pipeline's request is reused by any other's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from ragline.engine.errors import RaglineError
from ragline.engine.pipeline import Pipeline
from ragline.serve.errors import ApiError
from ragline.serve.metrics import ServerMetrics
from ragline.serve.served_pipeline import ServedPipeline
from ragline.serve.settings import ServeSettings
from ragline.serve.worker import Worker

log = logging.getLogger(__name__)


class ServerState:
    def __init__(self, pipelines: Mapping[str, Pipeline], settings: ServeSettings,
                 on_ready: Callable[[], None] | None = None,
                 on_warm_up_failure: Callable[[BaseException], None] | None = None):
        if not pipelines:
            raise ValueError("nothing to serve: give at least one pipeline")
        self.settings = settings
        self.metrics = ServerMetrics()
        # One thread for all model work: pipelines share loaded models (the
        # process-wide model cache) and KV stores, and a model's forward, the
        # attention probe's swap of its attention function and seeded sampling
        # must not run twice at once on it.
        self.worker = Worker("models")
        self.pipelines = {name: ServedPipeline(name, pipeline, settings, self.worker,
                                               on_batch=self.metrics.observe_batch,
                                               on_cancelled=self.metrics.count_cancelled)
                          for name, pipeline in pipelines.items()}
        self.started_at = int(time.time())
        self.ready = False
        self.failure: str | None = None
        self._on_ready = on_ready
        self._on_warm_up_failure = on_warm_up_failure
        self._warming: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # set when the app starts
        #: Whether the worker was still running model code when the server closed.
        self.worker_left_behind = False
        self.metrics.watch(lambda: {name: p.batcher.depth for name, p in self.pipelines.items()}, self.kv_stores)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.worker.start()
        for served in self.pipelines.values():
            served.start()
        self._warming = asyncio.get_running_loop().create_task(self._warm_up())

    def begin_shutdown(self) -> None:
        """On SIGTERM (from the signal handler): requests in flight have
        ``shutdown_timeout_s`` to finish; then whatever is left is answered
        with a 503 (a stream with an error event) instead of being cut off."""
        loop = self._loop
        if loop is None:  # a signal before the app started: nothing is in flight
            return
        loop.call_soon_threadsafe(loop.call_later, self.settings.shutdown_timeout_s, self.abandon_work)

    def abandon_work(self) -> None:
        abandoned = sum(served.abandon() for served in self.pipelines.values())
        if abandoned:
            log.warning("shutdown: %d request(s) not finished after %.0f s answered 503", abandoned,
                        self.settings.shutdown_timeout_s)

    async def close(self) -> None:
        if self._warming is not None:
            self._warming.cancel()
        await asyncio.gather(*(p.stop() for p in self.pipelines.values()))
        self.worker_left_behind = not await asyncio.to_thread(self.worker.stop, self.settings.shutdown_timeout_s)

    async def _warm_up(self) -> None:
        started = time.perf_counter()
        try:
            for served in self.pipelines.values():  # one at a time: loading models in parallel only competes
                await served.warm_up()
        except Exception as error:
            self.failure = f"warming up failed: {type(error).__name__}: {error}"
            # ragline's own errors say what to do in one line; anything else is a bug and keeps its traceback.
            log.error("%s", self.failure, exc_info=None if isinstance(error, RaglineError) else error)
            if self._on_warm_up_failure is not None:
                self._on_warm_up_failure(error)
            return
        _share_kv_stores(self.pipelines.values())
        self.ready = True
        log.info("ready in %.1f s: %s", time.perf_counter() - started, ", ".join(self.pipelines))
        if self._on_ready is not None:
            self._on_ready()

    def pipeline(self, name: str | None, field: str, generating: bool = False) -> ServedPipeline:
        """The pipeline a request names (by default the first that can do what it asks)."""
        if name is None:
            able = [p for p in self.pipelines.values() if (p.generates if generating else p.searches)]
            if not able:
                raise ApiError(400, f"no served pipeline can {'answer' if generating else 'search'}", param=field)
            return able[0]
        served = self.pipelines.get(name)
        if served is None:
            raise ApiError(404, f"{field}: no pipeline named {name!r}; served: {', '.join(self.pipelines)}",
                           param=field)
        if generating and not served.generates:
            raise ApiError(400, f"{field}: pipeline {name!r} has no generate stage; it can only search", param=field)
        if not generating and not served.searches:
            raise ApiError(400, f"{field}: pipeline {name!r} has no stage before generation to search with",
                           param=field)
        return served

    def kv_stores(self) -> dict[str, object]:
        """The passage KV stores in use, by model."""
        stores = {}
        for served in self.pipelines.values():
            reuse = getattr(served.generator, "reuse", None)
            if reuse is not None and reuse.store is not None:
                stores.setdefault(id(reuse.store), (reuse.generator.model, reuse.store))
        by_model: dict[str, object] = {}
        for model, store in stores.values():
            by_model[model if model not in by_model else f"{model}#{len(by_model)}"] = store
        return by_model


def _share_kv_stores(pipelines) -> None:
    """One passage KV store per (model, device, dtype): entries are keyed by
    model and exact token ids (with the sink's), so every pipeline on that
    model may read every other's; the first pipeline's store (and its memory
    budget and directory) serves them all."""
    first: dict[tuple, object] = {}
    for served in pipelines:
        reuse = getattr(served.generator, "reuse", None)
        if reuse is None or reuse.store is None:
            continue
        lm = reuse.generator.lm
        key = (reuse.generator.model, str(lm.device), str(lm.dtype))
        if key in first:
            reuse.store = first[key]
            log.info("pipeline %s shares the passage KV store of %s", served.name, key[0])
        else:
            first[key] = reuse.store
