"""Python's side of ``ragline.lucene.BulkSearcher``: open it, and unpack a
batch of hits from its flat arrays into ``(passage id, score)`` lists.

pyjnius converts each Java array and string of a batch in one go, so a
1000-deep batch costs a few conversions instead of one Java object, and two
attribute accesses, per hit.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection
from pathlib import Path

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
               allowed_ids: Collection[str] | None = None) -> list[list[tuple[str, float]]]:
        """One list per text, best first; only ids in ``allowed_ids`` when given.
        Ranking and scores are Anserini's (see BulkSearcher.java)."""
        id_filter = None if allowed_ids is None else self._id_filter(allowed_ids)
        batch = self._java.search(list(texts), id_filter, int(k), int(threads))
        docids, lengths, scores = batch.docids, batch.docidLengths, batch.scores
        starts = itertools.chain((0,), itertools.accumulate(lengths))
        ends = itertools.accumulate(lengths)
        hits = zip(map(docids.__getitem__, map(slice, starts, ends)), scores)
        return [list(itertools.islice(hits, count)) for count in batch.counts]

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
