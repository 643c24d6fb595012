"""The retrieval pipelines the CLI offers by name: bm25, dense, or hybrid
(BM25 + dense fused with reciprocal rank fusion).

Stages are looked up by their registered names, so the engine does not import
the retriever modules.
"""

from __future__ import annotations

from collections.abc import Sequence

from ragline.engine.errors import IndexNotFound, InputError
from ragline.engine.index.layout import IndexDir
from ragline.engine.pipeline import Pipeline
from ragline.engine.registry import STAGES, lookup
from ragline.engine.types import Hit

RETRIEVERS = ("auto", "bm25", "dense", "hybrid")


def retrieval_pipeline(index_path: str, retriever: str = "auto", k: int = 10, top_k: int | None = None,
                       depth: int | None = None, filter: str | list[str] | None = None) -> Pipeline:
    """``k`` results per query; ``depth`` is how many each retriever fetches
    before fusion (default: max(k, 100)); ``filter``: a metadata filter every
    retriever applies (engine/index/filters.py)."""
    if retriever not in RETRIEVERS:
        raise InputError(f"unknown retriever {retriever!r}; use one of {', '.join(RETRIEVERS)}")
    index = IndexDir.open(index_path)
    if retriever == "auto":
        retriever = "hybrid" if {"bm25", "dense"} <= set(index.components) else _only_component(index)
    if retriever != "hybrid":
        index.component(retriever)  # a clear error if it was not built
        stages = [lookup(STAGES, retriever)(index=index_path, k=k, filter=filter)]
    else:
        for name in ("bm25", "dense"):
            index.component(name)
        depth = depth or max(k, 100)
        stages = [
            lookup(STAGES, "bm25")(index=index_path, k=depth, filter=filter),
            lookup(STAGES, "dense")(index=index_path, k=depth, filter=filter),
            lookup(STAGES, "fuse")(method="rrf", top_k=k),
        ]
    return Pipeline(stages, top_k=k if top_k is None else top_k)


def _only_component(index: IndexDir) -> str:
    known = [c for c in index.components if c in ("bm25", "dense")]
    if not known:
        raise IndexNotFound(f"index {index.path} has no retrieval component")
    return known[0]


def fold_to_documents(hits: Sequence[Hit]) -> list[tuple[str, float]]:
    """Passage hits → ``(doc id, score)``, each document once, at its best
    passage. Unchunked indexes have passage id = document id."""
    doc_of: dict[str, str] = {}
    # Only stores holding chunks need a look-up; elsewhere passage id = document id.
    stores = {id(h.store): h.store for h in hits if h.store is not None and h.store.has_chunks}
    for store in stores.values():
        doc_of.update(store.doc_ids(h.id for h in hits if h.store is store))
    best: dict[str, float] = {}
    for hit in hits:
        best.setdefault(doc_of.get(hit.id, hit.id), hit.score)
    return list(best.items())
