"""The retrieval pipelines the CLI offers by name: one index component's
retriever (``bm25``, ``dense``, or any registered component), ``hybrid``
(every component the index has, fused with reciprocal rank fusion), or
``auto`` (hybrid where the index has several, else its one).

Components and stages are looked up by their registered names, so the engine
does not import the retriever modules.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from ragline.engine.errors import IndexNotFound, InputError
from ragline.engine.index.component import component_names, index_component
from ragline.engine.index.layout import IndexDir
from ragline.engine.pipeline import Pipeline
from ragline.engine.registry import STAGES, lookup
from ragline.engine.types import Hit


def retriever_names() -> list[str]:
    """What ``--retriever`` accepts."""
    return ["auto", "hybrid", *component_names(searchable=True)]


def retrieval_pipeline(index_path: str, retriever: str = "auto", k: int = 10, top_k: int | None = None,
                       depth: int | None = None, filter: str | list[str] | None = None,
                       ray: str | None = None, missing_shards: str | None = None) -> Pipeline:
    """``k`` results per query; ``depth`` is how many each retriever fetches
    before fusion (default: max(k, 100)); ``filter``: a metadata filter every
    retriever applies (engine/index/filters.py). For a sharded index, ``ray``
    searches its shards on Ray (one actor each) and ``missing_shards`` (flag,
    fail) says what a shard that does not answer makes of a search."""
    known = retriever_names()
    if retriever not in known:
        raise InputError(f"unknown retriever {retriever!r}; use one of {', '.join(known)}")
    index = IndexDir.open(index_path)
    sharding = {}
    if ray is not None or missing_shards is not None:
        if "shards" not in index.meta:
            raise InputError(f"index {index.path} is not sharded: searching shards on Ray, or what a missing shard "
                             "means, applies only to a sharded index (ragline index --shards N)")
        sharding = {key: value for key, value in (("ray", ray), ("missing_shards", missing_shards)) if value is not None}
    built = [name for name in known[2:] if name in index.components]
    if not built:
        raise IndexNotFound(f"index {index.path} has no retrieval component")
    if retriever == "auto":
        retriever = "hybrid" if len(built) > 1 else built[0]
    for name in built if retriever == "hybrid" else [retriever]:
        accepted = inspect.signature(index_component(name).retriever).parameters
        if sharding and not all(key in accepted for key in sharding):
            raise InputError(f"the {name} retriever cannot search shards on Ray or refuse partial results "
                             f"(it takes no {' or '.join(k for k in sharding if k not in accepted)} setting)")
    if retriever != "hybrid":
        if retriever not in built:
            raise IndexNotFound(f"index {index.path} has no {retriever} component (it has: {', '.join(built)})")
        stages = [index_component(retriever).retriever(index=index_path, k=k, filter=filter, **sharding)]
    elif len(built) < 2:
        raise InputError(f"hybrid retrieval fuses several components; index {index.path} has only {built[0]}")
    else:
        depth = depth or max(k, 100)
        stages = [index_component(name).retriever(index=index_path, k=depth, filter=filter, **sharding) for name in built]
        stages.append(lookup(STAGES, "fuse")(method="rrf", top_k=k))
    return Pipeline(stages, top_k=k if top_k is None else top_k)


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
