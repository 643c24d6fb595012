"""BM25 over a Lucene index built in-process by Anserini (through pyserini).

The index uses Anserini's default analyzer (Porter stemming, English stop
words); k1 and b are search-time settings, defaulting to pyserini's 0.9/0.4.

An update re-indexes every passage of the new index (engine/index/update.py):
BM25's collection statistics (document count, average length) then are
exactly those of a rebuild, and Lucene indexing is the cheap part of a build.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ragline.engine.index.layout import IndexDir, read_consistently
from ragline.engine.settings import NonNegativeFloat, PositiveInt, UnitInterval
from ragline.engine.types import Passage
from ragline.retrievers.base import Retriever
from ragline.retrievers.lucene_runtime import lucene_indexer, lucene_searcher

DEFAULT_K1 = 0.9
DEFAULT_B = 0.4


def _default_threads() -> int:
    return max(1, os.cpu_count() or 1)


class BM25IndexBuilder:
    name = "bm25"

    def __init__(self, threads: int | None = None):
        self.threads = threads or _default_threads()
        self._indexer = None
        self._count = 0

    @staticmethod
    def settings_from_meta(recorded: dict[str, Any]) -> dict[str, Any]:
        return {}

    def open(self, directory: Path) -> None:
        directory.mkdir(parents=True)
        self._indexer = lucene_indexer(directory, self.threads)

    def add(self, passages: list[Passage]) -> None:
        self._indexer.add_batch_dict([{"id": p.id, "contents": p.indexed_text()} for p in passages])
        self._count += len(passages)

    def close(self) -> dict[str, Any]:
        self._indexer.close()
        self._indexer = None
        return {
            "count": self._count,
            "analyzer": "anserini default (Porter stemmer, English stop words)",
            "k1": DEFAULT_K1,
            "b": DEFAULT_B,
            "stored": "raw",
        }

    def abort(self) -> None:
        if self._indexer is not None:
            try:
                self._indexer.close()
            finally:
                self._indexer = None


class BM25(Retriever):
    """Retrieve the top ``k`` passages of every query in the batch with BM25."""

    name = "bm25"

    def __init__(self, index: str, k: PositiveInt = 100, k1: NonNegativeFloat = DEFAULT_K1, b: UnitInterval = DEFAULT_B,
                 threads: PositiveInt | None = None):
        self.index = str(index)
        self.k = self.check_k(k)
        self.k1 = k1
        self.b = b
        self.threads = threads
        self._searcher = None

    def warm_up(self) -> None:
        self._store, self._searcher = read_consistently(self.index, self._open)

    def _open(self, index: IndexDir):
        path, _ = index.component("bm25")
        store = index.docstore()
        searcher = lucene_searcher(path)
        searcher.set_bm25(float(self.k1), float(self.b))
        return store, searcher

    def search(self, texts: list[str], k: int | None = None) -> list[list[tuple[str, float]]]:
        """``(passage id, score)`` lists, one per text, best first."""
        self.warm_up()
        keys = [str(i) for i in range(len(texts))]
        results = self._searcher.batch_search(texts, keys, k=k or self.k, threads=self.threads or _default_threads())
        return [[(hit.docid, hit.score) for hit in results.get(key, [])] for key in keys]
