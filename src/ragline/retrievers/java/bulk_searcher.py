"""Python's side of ``ragline.lucene.BulkSearcher``: open it, and unpack a
batch of hits from its flat arrays into ``(passage id, score)`` lists.

pyjnius converts each Java array and string of a batch in one go, so a
1000-deep batch costs a few conversions instead of one Java object, and two
attribute accesses, per hit.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASS_NAME = "ragline.lucene.BulkSearcher"


class BulkSearcher:
    """BM25 over one Lucene index, ``k1`` and ``b`` fixed. The JVM must be
    running with this folder on its classpath (lucene_runtime.ensure_lucene).
    Raises a ``jnius.JavaException`` when the class cannot be loaded or linked,
    or the index cannot be opened."""

    def __init__(self, index_path: str | Path, k1: float, b: float):
        from jnius import autoclass

        self._java = autoclass(CLASS_NAME)(str(index_path), float(k1), float(b))
        self._last_filter: tuple[frozenset[str] | None, object] = (None, None)

    def search(self, texts: list[str], k: int, threads: int,
               allowed_ids: Collection[str] | None = None, anserini_ties: bool = True) -> list[list[tuple[str, float]]]:
        """One list per text, best first; only ids in ``allowed_ids`` when given.
        Ranking and scores are Anserini's (see BulkSearcher.java); with
        ``anserini_ties=False`` the scores are Lucene's raw ones, for a merge
        of shards that applies ``anserini_ties`` to the merged list."""
        id_filter = None if allowed_ids is None else self._id_filter(allowed_ids)
        batch = self._java.search(list(texts), id_filter, int(k), int(threads), bool(anserini_ties))
        hits = zip(_cut(batch.docids, batch.docidLengths), batch.scores)
        return [list(itertools.islice(hits, count)) for count in batch.counts]

    def statistics(self) -> LuceneStatistics:
        """This index's term and field statistics (what BM25 scores with)."""
        found = self._java.statistics()
        return LuceneStatistics(list(_cut(found.terms, found.termLengths)), list(found.docFreqs),
                                list(found.totalFreqs), tuple(found.collection))

    def use_global_statistics(self, statistics: LuceneStatistics) -> None:
        """Score with ``statistics`` (the whole collection's) from now on."""
        self._java.useGlobalStatistics("".join(statistics.terms), [len(t) for t in statistics.terms],
                                       statistics.doc_freqs, statistics.total_freqs, list(statistics.collection))

    def _id_filter(self, allowed_ids: Collection[str]):
        # Building Lucene's term set is most of a filter's cost, and filters
        # repeat (a retriever keeps one frozen selection per distinct filter),
        # so the last frozenset's is kept; a mutable collection is never reused.
        kept, built = self._last_filter
        if allowed_ids is kept:
            return built
        built = self._java.idFilter(list(allowed_ids))
        if isinstance(allowed_ids, frozenset):
            self._last_filter = (allowed_ids, built)
        return built


def _cut(joined: str, lengths: Sequence[int]):
    """The strings that Java concatenated, cut apart by their lengths in code points."""
    starts = itertools.chain((0,), itertools.accumulate(lengths))
    return map(joined.__getitem__, map(slice, starts, itertools.accumulate(lengths)))


@dataclass(frozen=True)
class LuceneStatistics:
    """The statistics BM25 scores with, of one index or summed over shards:
    every term's document and total frequency, and the field's maxDoc, document
    count, total term count and summed document frequencies."""

    terms: list[str]
    doc_freqs: list[int]
    total_freqs: list[int]
    collection: tuple[int, int, int, int]

    @classmethod
    def summed(cls, parts: Sequence[LuceneStatistics]) -> LuceneStatistics:
        """The statistics of the union of disjoint indexes (shards)."""
        doc_freqs: Counter[str] = Counter()
        total_freqs: Counter[str] = Counter()
        for part in parts:
            for term, doc_freq, total_freq in zip(part.terms, part.doc_freqs, part.total_freqs):
                doc_freqs[term] += doc_freq
                total_freqs[term] += total_freq
        terms = sorted(doc_freqs)
        return cls(terms, [doc_freqs[t] for t in terms], [total_freqs[t] for t in terms],
                   tuple(sum(values) for values in zip(*(p.collection for p in parts))))


def anserini_ties(scores: Sequence[float]) -> list[float]:
    """Anserini's ``ScoreTiesAdjusterReranker`` on one query's hits, sorted by
    raw score then id: BulkSearcher.java's ``adjustTies``, step for step in the
    same float and double arithmetic, for a list merged from shards."""
    adjusted: list[np.float32] = []
    behind = 0
    for i, score in enumerate(scores):
        # (float) (Math.round(score * 10000.0d) / 10000.0d): Math.round is floor(x + 0.5).
        value = np.float32(math.floor(float(np.float32(score)) * 10000.0 + 0.5) / 10000.0)
        if i == 0 or adjusted[i - 1] - value > np.float32(1e-4):
            behind = 0
        else:
            behind += 1
            value = np.float32(value - np.float32(1e-6) * np.float32(behind))
        adjusted.append(value)
    return [float(v) for v in adjusted]
