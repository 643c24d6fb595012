"""Fusing the ranked lists of several retrievers into one ranking.

- ``rrf``: reciprocal rank fusion, score(d) = Σ_lists 1 / (k + rank(d)), k = 60
  by default (Cormack et al., 2009). Uses ranks only, so scores on different
  scales need no calibration.
- ``weighted``: Σ_lists w · norm(score(d)), where ``norm`` is min-max (to
  [0, 1]) or z-score within each list; a passage missing from a list gets
  nothing from it.
Ties break by passage id, so the output is deterministic.
"""

from __future__ import annotations

import statistics
import typing
from collections.abc import Mapping, Sequence
from typing import Literal

from ragline.engine.settings import NonNegativeInt, PositiveInt
from ragline.engine.stage import Stage
from ragline.engine.types import Hit, Query

Method = Literal["rrf", "weighted"]
Normalization = Literal["minmax", "zscore"]
METHODS = typing.get_args(Method)
NORMALIZATIONS = typing.get_args(Normalization)


def reciprocal_rank_fusion(lists: Sequence[Sequence[Hit]], k: int = 60) -> list[Hit]:
    scores: dict[str, float] = {}
    for hits in lists:
        for hit in hits:
            scores[hit.id] = scores.get(hit.id, 0.0) + 1.0 / (k + hit.rank)
    return _ranked(scores, lists, "rrf")


def weighted_fusion(lists: Sequence[Sequence[Hit]], weights: Sequence[float], normalization: str = "minmax") -> list[Hit]:
    scores: dict[str, float] = {}
    for hits, weight in zip(lists, weights, strict=True):
        for hit, value in zip(hits, _normalize([h.score for h in hits], normalization)):
            scores[hit.id] = scores.get(hit.id, 0.0) + weight * value
    return _ranked(scores, lists, "weighted")


def _normalize(values: list[float], normalization: str) -> list[float]:
    if not values:
        return []
    if normalization == "minmax":
        low, high = min(values), max(values)
        return [1.0 if high == low else (v - low) / (high - low) for v in values]
    mean = statistics.fmean(values)
    spread = statistics.pstdev(values)
    return [0.0 if spread == 0 else (v - mean) / spread for v in values]


def _ranked(scores: dict[str, float], lists: Sequence[Sequence[Hit]], source: str) -> list[Hit]:
    stores = {}
    for hits in lists:
        for hit in hits:
            stores.setdefault(hit.id, hit.store)
    order = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    return [Hit(pid, score, rank, source, stores[pid]) for rank, (pid, score) in enumerate(order, 1)]


class Fuse(Stage):
    """Combine the lists in ``Query.hits`` into ``Query.ranking``.

    ``sources`` picks which retrievers' lists (default: all, in pipeline
    order); ``weights`` maps a source to its weight for ``weighted`` (default 1);
    ``top_k`` truncates the fused list.
    """

    name = "fuse"
    is_fusion = True

    def __init__(self, method: Method = "rrf", k: NonNegativeInt = 60, weights: Mapping[str, float] | None = None,
                 normalization: Normalization = "minmax", sources: Sequence[str] | None = None,
                 top_k: PositiveInt | None = None):
        self.method = method
        self.k = k
        self.weights = dict(weights) if weights else None
        self.normalization = normalization
        self.sources = list(sources) if sources else None
        self.top_k = top_k

    def run(self, batch: list[Query]) -> list[Query]:
        for query in batch:
            sources = self.sources or list(query.hits)
            lists = [query.hits.get(source, []) for source in sources]
            if self.method == "rrf":
                fused = reciprocal_rank_fusion(lists, self.k)
            else:
                weights = [(self.weights or {}).get(source, 1.0) for source in sources]
                fused = weighted_fusion(lists, weights, self.normalization)
            query.ranking = fused[: self.top_k] if self.top_k else fused
        return batch
