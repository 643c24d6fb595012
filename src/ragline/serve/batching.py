"""The micro-batcher: concurrent requests for one pipeline, gathered into
one batch, run on the pipeline's worker thread, results scattered back.

The oldest waiting request decides the next batch. It waits at most
``wait_s`` after its arrival for others that may share its batch (same
operation and key: all searches; answers with the same sampling), up to
``max_batch`` of them; then ``run(operation, items)`` runs once on the
worker and returns one result per item, in order. Requests that arrive while
a batch runs wait for the next one, so a busy pipeline batches even with
``wait_s`` 0. A request that is abandoned (timed out, disconnected) before its
batch starts is dropped from it.

A batch that raises is run again one request at a time, so one poisoned
request fails alone instead of taking its neighbours with it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ragline.serve.worker import Worker

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The pipeline has ``max_queue`` requests waiting already."""

    def __init__(self, pipeline: str, retry_after: int):
        super().__init__(f"pipeline {pipeline!r} has too many requests waiting; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class _Waiting:
    operation: str
    item: Any
    group: Hashable | None  # None: runs alone
    arrived: float
    future: asyncio.Future = field(repr=False)


@dataclass
class _Failed:
    error: BaseException


class MicroBatcher:
    def __init__(self, name: str, worker: Worker, run: Callable[[str, list[Any]], list[Any]], *,
                 wait_s: float, max_batch: int, max_queue: int,
                 on_batch: Callable[[str, int, float], None] | None = None):
        self.name = name
        self.worker = worker
        self.run = run
        self.wait_s = wait_s
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._waiting: list[_Waiting] = []
        self._running: list[_Waiting] = []  # the batch on the worker now
        self._arrived = asyncio.Event()
        self._batch_seconds = 0.0  # a running average, for Retry-After
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._form_batches(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for waiting in self._waiting:
            waiting.future.cancel()

    def abandon(self, error: Exception) -> list[Any]:
        """Fail every request waiting or running with ``error`` (shutdown past
        its timeout); the items abandoned, for the caller to stop their work."""
        abandoned = [w for w in (*self._waiting, *self._running) if not w.future.done()]
        for waiting in abandoned:
            waiting.future.set_exception(error)
        return [w.item for w in abandoned]

    @property
    def depth(self) -> int:
        """Requests waiting for a batch (not those in the batch running)."""
        return sum(not w.future.done() for w in self._waiting)

    def enqueue(self, operation: str, items: Sequence[Any], *, batchable: bool = True,
                key: Hashable = None) -> list[asyncio.Future]:
        """One future per item, all admitted or (``QueueFull``) none."""
        if self.depth + len(items) > self.max_queue:
            raise QueueFull(self.name, self._retry_after())
        loop = asyncio.get_running_loop()
        group = (operation, key) if batchable else None
        admitted = [_Waiting(operation, item, group, loop.time(), loop.create_future()) for item in items]
        self._waiting.extend(admitted)
        self._arrived.set()
        return [w.future for w in admitted]

    def _retry_after(self) -> int:
        batches_ahead = 1 + self.depth / self.max_batch
        return max(1, min(60, math.ceil(self._batch_seconds * batches_ahead)))

    async def _form_batches(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while batch := await self._next_batch():
                try:
                    await self._run_batch(batch)
                except Exception as error:  # a bug here must not stall every later request
                    log.exception("pipeline %s: batch failed outside the pipeline", self.name)
                    for waiting in batch:
                        if not waiting.future.done():
                            waiting.future.set_exception(error)

    async def _next_batch(self) -> list[_Waiting]:
        """The next batch to run (empty when nothing waits), taken off the queue."""
        while True:
            self._waiting = [w for w in self._waiting if not w.future.done()]
            if not self._waiting:
                return []
            first = self._waiting[0]
            if first.group is None:
                batch = [first]
            else:
                await self._gather_more(first)
                batch = [w for w in self._waiting if w.group == first.group][: self.max_batch]
            taken = {id(w) for w in batch}
            self._waiting = [w for w in self._waiting if id(w) not in taken]
            batch = [w for w in batch if not w.future.done()]
            if batch:
                return batch

    async def _gather_more(self, first: _Waiting) -> None:
        """Wait until the batch of ``first`` is full or its wait is over."""
        loop = asyncio.get_running_loop()
        deadline = first.arrived + self.wait_s
        while sum(w.group == first.group for w in self._waiting) < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _run_batch(self, batch: list[_Waiting]) -> None:
        operation = batch[0].operation
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._running = batch
        try:
            results = await asyncio.wrap_future(
                self.worker.submit(self._run_isolating, operation, [w.item for w in batch]))
        except Exception as error:  # the worker could not run it at all
            results = [_Failed(error)] * len(batch)
        finally:
            self._running = []
        seconds = loop.time() - started
        self._batch_seconds = seconds if not self._batch_seconds else 0.8 * self._batch_seconds + 0.2 * seconds
        if self.on_batch is not None:
            self.on_batch(operation, len(batch), seconds)
        for waiting, result in zip(batch, results):
            if waiting.future.done():  # abandoned while it ran
                continue
            if isinstance(result, _Failed):
                waiting.future.set_exception(result.error)
            else:
                waiting.future.set_result(result)

    def _run_isolating(self, operation: str, items: list[Any]) -> list[Any]:
        """On the worker thread: the batch, or each item alone if the batch raised."""
        try:
            results = self.run(operation, items)
        except Exception as error:
            if len(items) == 1:
                return [_Failed(error)]
            log.warning("pipeline %s: a %s batch of %d failed (%s: %s); running its requests one at a time",
                        self.name, operation, len(items), type(error).__name__, error)
            return [self._run_one(operation, item) for item in items]
        if len(results) != len(items):
            raise RuntimeError(f"{operation} returned {len(results)} results for {len(items)} requests")
        return results

    def _run_one(self, operation: str, item: Any) -> Any:
        try:
            return self.run(operation, [item])[0]
        except Exception as error:
            return _Failed(error)
