"""One comparison of two index folders, shared by the tests of resumed and
distributed builds: both must end equal to a clean single-process build."""

from __future__ import annotations

from pathlib import Path

from ragline.engine.index.layout import IndexDir
from ragline.retrievers.bm25 import BM25
from ragline.retrievers.dense import Dense


def assert_same_index(got: Path, want: Path, queries: list[str], retrievers=(BM25, Dense)) -> None:
    """Same meta.json (timings apart), document store and files; rankings equal
    (BM25 exactly, dense scores within 1e-5)."""
    g, w = IndexDir.open(got), IndexDir.open(want)
    assert {**g.meta, "created": None} == {**w.meta, "created": None}
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())  # no journal, no WAL left
    n = w.docstore().count()
    assert g.docstore().count() == n
    assert g.docstore().passages_in_rows(0, n) == w.docstore().passages_in_rows(0, n)
    assert g.docstore().document_hashes() == w.docstore().document_hashes()
    for retriever in retrievers:
        for query, a, b in zip(queries, retriever(str(got), k=20).search(queries), retriever(str(want), k=20).search(queries)):
            assert [pid for pid, _ in a] == [pid for pid, _ in b], (retriever.name, query)
            if retriever is BM25:
                assert a == b, query
            else:
                assert max((abs(x - y) for (_, x), (_, y) in zip(a, b)), default=0.0) <= 1e-5, query
