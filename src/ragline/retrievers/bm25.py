"""BM25 over a Lucene index built in-process by Anserini (through pyserini).

The index uses Anserini's default analyzer (Porter stemming, English stop
words); k1 and b are search-time settings, defaulting to pyserini's 0.9/0.4.

An update re-indexes every passage of the new index (engine/index/update.py):
BM25's collection statistics (document count, average length) then are
exactly those of a rebuild, and Lucene indexing is the cheap part of a build.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Literal

from ragline.engine.errors import RaglineError
from ragline.engine.index.component import IndexBuilder, IndexComponent
from ragline.engine.index.docstore import Selection
from ragline.engine.index.layout import IndexDir, read_consistently
from ragline.engine.settings import NonNegativeFloat, PositiveInt, UnitInterval
from ragline.engine.types import Passage
from ragline.retrievers.base import Retriever
from ragline.retrievers.java.bulk_searcher import BulkSearcher, LuceneStatistics, anserini_ties
from ragline.retrievers.lucene_runtime import ensure_lucene, lucene_indexer, lucene_searcher

DEFAULT_K1 = 0.9
DEFAULT_B = 0.4

log = logging.getLogger(__name__)


def _default_threads() -> int:
    return max(1, os.cpu_count() or 1)


class BM25IndexBuilder(IndexBuilder):
    """Has no ``resume``: a resumed build re-indexes the passages committed
    before the interruption from the document store (engine/index/build.py),
    which costs little next to encoding them, rather than reopening Lucene's
    segments, whose commits would have to be kept in step with the store's."""

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

    def add(self, passages: list[Passage], previous_rows: list[int | None] | None = None) -> None:
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
    """Retrieve the top ``k`` passages of every query in the batch with BM25.
    ``filter``: a metadata filter (``"year>=2020 and lang=en"``, or a list that must all hold).

    On a sharded index every shard scores with the whole collection's
    statistics, so scores and ranking equal one index's; ``ray`` (auto, local
    or HOST:PORT) searches the shards on Ray, one actor each; ``missing_shards``
    says what a shard that does not answer makes of a search: ``flag`` (the
    other shards' hits, marked partial) or ``fail``."""

    name = "bm25"

    def __init__(self, index: str, k: PositiveInt = 100, k1: NonNegativeFloat = DEFAULT_K1, b: UnitInterval = DEFAULT_B,
                 threads: PositiveInt | None = None, filter: str | list[str] | None = None, ray: str | None = None,
                 missing_shards: Literal["flag", "fail"] = "flag"):
        self.index = str(index)
        self.k = k
        self.k1 = k1
        self.b = b
        self.threads = threads
        self.filter = filter
        self.set_filter(filter)
        self.ray = ray
        self.missing_shards = missing_shards
        self._searcher = None
        # Scoring with the collection statistics of a sharded index: raw scores, for the merge.
        self._raw_scores = False

    def warm_up(self) -> None:
        if self.open_shards():
            return
        self._store, self._searcher = read_consistently(self.index, self._open)

    def _open(self, index: IndexDir):
        path, _ = index.component("bm25")
        return index.docstore(), self._open_searcher(path)

    def _open_searcher(self, path: Path):
        """ragline's bulk searcher (retrievers/java/), else pyserini's own, with a warning."""
        ensure_lucene()
        try:
            return BulkSearcher(path, self.k1, self.b)
        except Exception as err:  # a JavaException: the class missing or unlinkable, or a broken index
            searcher = lucene_searcher(path)  # a broken index raises here, as it always has
            searcher.set_bm25(float(self.k1), float(self.b))
            log.warning("BM25 falls back to pyserini's batch_search, several times slower at depth: "
                        "ragline's bulk searcher cannot be used (%s)", str(err).partition("\n")[0])
            return searcher

    def search(self, texts: list[str], k: int | None = None,
               allowed: Selection | Collection[str] | None = None) -> list[list[tuple[str, float]]]:
        """``(passage id, score)`` lists, one per text, best first. ``allowed``:
        the passages hits must be among (a ``Selection`` or passage ids), a
        filter inside Lucene that leaves the scores as they are."""
        self.warm_up()
        if self._shards is not None:
            return self.search_shards(texts, k, allowed)
        depth = k or self.k
        threads = self.threads or _default_threads()
        allowed_ids = getattr(allowed, "ids", allowed)
        if allowed_ids is not None and not allowed_ids:
            return [[] for _ in texts]
        if isinstance(self._searcher, BulkSearcher):
            return self._searcher.search(texts, depth, threads, allowed_ids, anserini_ties=not self._raw_scores)
        return _pyserini_search(self._searcher, texts, depth, threads, allowed_ids)

    def shard_statistics(self) -> LuceneStatistics:
        self.warm_up()
        return self._bulk_searcher().statistics()

    @classmethod
    def merged_statistics(cls, parts: Sequence[LuceneStatistics]) -> LuceneStatistics:
        return LuceneStatistics.summed(parts)

    def use_statistics(self, statistics: LuceneStatistics) -> None:
        self.warm_up()
        self._bulk_searcher().use_global_statistics(statistics)
        self._raw_scores = True

    @classmethod
    def merge_shard_lists(cls, lists, k):
        """Sorted by raw score, then by id (Anserini's order for ties), then
        Anserini's tie adjustment over the merged list — what one index gives."""
        merged = sorted(itertools.chain.from_iterable(lists), key=lambda hit: (-hit[1], hit[0]))[:k]
        scores = anserini_ties([score for _, score, _ in merged])
        return [(pid, score, shard) for (pid, _, shard), score in zip(merged, scores)]

    def _bulk_searcher(self) -> BulkSearcher:
        if not isinstance(self._searcher, BulkSearcher):
            raise RaglineError(f"a shard of a sharded index needs ragline's bulk BM25 searcher, which could not be "
                               f"loaded for {self.index} (see the warning above)")
        return self._searcher


def _pyserini_search(searcher, texts: list[str], k: int, threads: int,
                     allowed_ids: Collection[str] | None) -> list[list[tuple[str, float]]]:
    """The fallback: pyserini's searcher, whose hits are one Java object each."""
    if allowed_ids is None:
        keys = [str(i) for i in range(len(texts))]
        results = searcher.batch_search(texts, keys, k=k, threads=threads)
        return [[(hit.docid, hit.score) for hit in results.get(key, [])] for key in keys]
    from jnius import autoclass

    # The same query as the bulk searcher's, through Anserini's own search(Query, k):
    # Anserini's bag of words, and a FILTER clause on its collection-id field.
    generator = autoclass("io.anserini.search.query.BagOfWordsQueryGenerator")()
    occur = autoclass("org.apache.lucene.search.BooleanClause$Occur")
    bytes_ref = autoclass("org.apache.lucene.util.BytesRef")
    terms = autoclass("java.util.ArrayList")()
    for pid in allowed_ids:
        terms.add(bytes_ref(pid.encode()))
    id_filter = autoclass("org.apache.lucene.search.TermInSetQuery")("id", terms)
    analyzer = searcher.object.get_analyzer()
    builder = autoclass("org.apache.lucene.search.BooleanQuery$Builder")
    found = []
    for text in texts:
        query = (builder()
                 .add(generator.buildQuery("contents", analyzer, text), occur.MUST)
                 .add(id_filter, occur.FILTER).build())
        found.append([(hit.docid, hit.score) for hit in searcher.object.search(query, k)])
    return found


BM25_INDEX = IndexComponent(BM25IndexBuilder, BM25)
