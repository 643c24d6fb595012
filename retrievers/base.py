"""The shared shape of first-stage retrievers: ``search`` turns query texts
into ``(passage id, score)`` lists, and ``run`` turns those into hits."""

from __future__ import annotations

import abc
import contextlib
import gc

from ragline.engine.errors import ConfigError
from ragline.engine.stage import Stage
from ragline.engine.types import Hit, Query


class Retriever(Stage):
    is_retriever = True
    #: The document store of the index searched; set by ``warm_up``.
    _store = None

    @staticmethod
    def check_k(k: int) -> int:
        if k < 1:
            raise ConfigError("k must be >= 1")
        return k

    @abc.abstractmethod
    def search(self, texts: list[str], k: int | None = None) -> list[list[tuple[str, float]]]:
        """One ``(passage id, score)`` list per text, best first."""

    def run(self, batch: list[Query]) -> list[Query]:
        # A batch of 1000-deep result lists is ~10^5 new objects (the search
        # library's result wrappers, then our hits): enough to set off full
        # cyclic-GC passes over every object of the process (torch and all),
        # measured at ~10% of a BM25 batch. Nothing here forms reference
        # cycles, so the collector can wait until the batch is done.
        with _cyclic_gc_paused():
            results = self.search([q.text for q in batch])
            for query, found in zip(batch, results):
                hits = [Hit(pid, score, rank, self.name, self._store) for rank, (pid, score) in enumerate(found, 1)]
                query.hits[self.name] = hits
                query.ranking = hits
        return batch


@contextlib.contextmanager
def _cyclic_gc_paused():
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
