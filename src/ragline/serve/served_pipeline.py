"""One pipeline behind the server: what each operation runs on the
pipeline's worker thread, and the micro-batcher in front of it.

Operations: ``search`` runs the stages before generation (all of them in a
retrieval pipeline) and attaches the text of each query's top ``k``;
``answer`` runs the whole pipeline; ``stream`` runs it for one question with
the answer streamed. Searches batch together, answers batch with answers
that decode alike; a stream runs alone.

Everything runs through ``Pipeline.run``: a request's decoding settings
(``max_tokens``, ``temperature``, ``stop``) ride on its ``Query`` as its own
``Sampling`` and never touch the shared stage; a stream passes ``on_text``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ragline.engine.index.docstore import fetch_passages
from ragline.engine.pipeline import Pipeline
from ragline.engine.types import Query
from ragline.generators.backend import Sampling
from ragline.generators.generate import Generate
from ragline.serve.batching import MicroBatcher
from ragline.serve.errors import ShuttingDown
from ragline.serve.settings import ServeSettings
from ragline.serve.streaming import GenerationCancelled, StopFilter, TextChannel
from ragline.serve.worker import Worker

log = logging.getLogger(__name__)

WARM_UP_QUERY = "ragline warm-up query"


@dataclass(frozen=True)
class SearchJob:
    text: str
    k: int
    filter: str | None = None


@dataclass(frozen=True)
class AnswerJob:
    question: str
    sampling: Sampling
    filter: str | None = None


@dataclass(frozen=True)
class StreamJob:
    question: str
    sampling: Sampling
    channel: TextChannel
    filter: str | None = None


class ServedPipeline:
    def __init__(self, name: str, pipeline: Pipeline, settings: ServeSettings, worker: Worker,
                 on_batch: Callable[[str, str, int, float], None] | None = None,
                 on_cancelled: Callable[[str], None] | None = None):
        """``worker``: the thread this pipeline's model work runs on, shared
        with every other served pipeline (they may share loaded models)."""
        self.name = name
        self.pipeline = pipeline
        self.generator: Generate | None = next((s for s in pipeline.stages if isinstance(s, Generate)), None)
        self.retrieval = pipeline.retrieval_part()
        self._on_cancelled = on_cancelled
        self.worker = worker
        self.batcher = MicroBatcher(
            name, self.worker, self._run, wait_s=settings.batch_wait_ms / 1000, max_batch=settings.max_batch,
            max_queue=settings.max_queue,
            on_batch=None if on_batch is None else lambda operation, size, s: on_batch(name, operation, size, s))

    @property
    def generates(self) -> bool:
        return self.generator is not None

    @property
    def searches(self) -> bool:
        return self.retrieval is not None

    def sampling(self, **overrides) -> Sampling:
        """The generate stage's sampling with a request's overrides (None: keep)."""
        given = {key: value for key, value in overrides.items() if value is not None}
        return dataclasses.replace(self.generator.sampling, **given)

    # -- lifecycle (the event loop's side) ---------------------------------------------------
    def start(self) -> None:
        self.batcher.start()

    async def warm_up(self) -> None:
        """Load every stage and run the retrieval stages once, on the worker thread."""
        await asyncio.wrap_future(self.worker.submit(self._warm_up))

    async def stop(self) -> None:
        """Stop batching; the shared worker is stopped by the server state."""
        await self.batcher.stop()

    def abandon(self) -> int:
        """Answer every request waiting or running with ``ShuttingDown`` and
        stop the streamed generations at their next token; how many."""
        items = self.batcher.abandon(ShuttingDown())
        for item in items:
            if isinstance(item, StreamJob):
                item.channel.cancel()
        return len(items)

    # -- requests (the event loop's side) -----------------------------------------------------
    def check_filter(self, query_filter: str | None) -> None:
        """``FilterError`` if a retriever of this pipeline cannot apply ``query_filter``:
        checked before queueing, so one bad filter never fails a whole batch."""
        for stage in self.retrieval.stages if self.retrieval else []:
            if getattr(stage, "is_retriever", False):
                stage.check_filter(query_filter)

    async def search(self, texts: list[str], k: int, timeout: float, query_filter: str | None = None) -> list[Query]:
        futures = self.batcher.enqueue("search", [SearchJob(text, k, query_filter) for text in texts])
        return await _within(timeout, asyncio.gather(*futures))

    async def answer(self, question: str, sampling: Sampling, timeout: float, query_filter: str | None = None) -> Query:
        (future,) = self.batcher.enqueue("answer", [AnswerJob(question, sampling, query_filter)], key=sampling)
        return await _within(timeout, future)

    def stream(self, question: str, sampling: Sampling, timeout: float, query_filter: str | None = None) -> AnswerStream:
        """Admit a streamed answer now (``QueueFull`` before any byte is sent); read it from the result."""
        channel = TextChannel(asyncio.get_running_loop())
        (future,) = self.batcher.enqueue("stream", [StreamJob(question, sampling, channel, query_filter)],
                                         batchable=False)
        future.add_done_callback(lambda _: channel.close())
        return AnswerStream(future, channel, StopFilter(sampling.stop), time.monotonic() + timeout)

    # -- on the worker thread ------------------------------------------------------------------
    def _run(self, operation: str, jobs: list) -> list[Query]:
        if operation == "search":
            return self._search(jobs)
        if operation == "answer":
            return self._answer(jobs)
        return [self._stream(job) for job in jobs]

    def _search(self, jobs: list[SearchJob]) -> list[Query]:
        queries = self.retrieval.run([Query(id=str(i), text=job.text, filter=job.filter) for i, job in enumerate(jobs)])
        for query, job in zip(queries, jobs):
            query.passages = fetch_passages(query.ranking[: job.k])
        return queries

    def _answer(self, jobs: list[AnswerJob]) -> list[Query]:
        return self.pipeline.run([Query(id=str(i), text=job.question, filter=job.filter, sampling=job.sampling)
                                  for i, job in enumerate(jobs)])

    def _stream(self, job: StreamJob) -> Query:
        if job.channel.cancelled:  # abandoned before it started
            raise GenerationCancelled()
        try:
            query = Query("q0", job.question, filter=job.filter, sampling=job.sampling)
            return self.pipeline.run([query], on_text=lambda _query, piece: job.channel.send(piece))[0]
        except GenerationCancelled:
            log.debug("pipeline %s: generation stopped after %d pieces: the client went away",
                      self.name, job.channel.pieces_sent)
            if self._on_cancelled is not None:
                self._on_cancelled(self.name)
            raise

    def _warm_up(self) -> None:
        self.pipeline.warm_up()
        if self.retrieval is not None:  # first calls compile, open and page in what warm_up only loads
            self.retrieval.run([WARM_UP_QUERY])
            self.check_filter(None)  # reads each index's metadata fields, for checking requests' filters


class AnswerStream:
    """A streamed answer: its text piece by piece, then the finished query."""

    def __init__(self, future: asyncio.Future, channel: TextChannel, stop: StopFilter, deadline: float):
        self._future = future
        self._channel = channel
        self._stop = stop
        self._deadline = deadline

    async def pieces(self) -> AsyncIterator[str]:
        """Text as it is generated, adding up to the final answer;
        ``TimeoutError`` past the request's deadline."""
        while (piece := await _within(self._deadline - time.monotonic(), self._channel.receive())) is not None:
            if text := self._stop.feed(piece):
                yield text
        if rest := self._stop.flush():
            yield rest

    async def result(self) -> Query:
        return await self._future

    def cancel(self) -> None:
        """Stop generating (at the next token), or never start."""
        self._channel.cancel()
        self._future.cancel()


async def _within(seconds: float, awaitable):
    """``awaitable``'s result, or ``TimeoutError`` (the builtin, on every Python) after ``seconds``."""
    try:
        return await asyncio.wait_for(awaitable, max(seconds, 0))
    except asyncio.TimeoutError:
        raise TimeoutError(f"no result within {seconds:.0f} s") from None

