"""Cross-encoder reranking: rescore the top candidates of each query's ranking
by reading query and passage together.

All (query, passage) pairs of a batch go to the model in one ``predict`` call,
so a GPU sees full batches however few candidates one query has. The new
ranking keeps the ``top_k`` best; each query's trace records the rank every
kept passage had before (``ranks_before``).

``first_stage_weight`` > 0 interpolates: each query's cross-encoder scores and
its first-stage scores are z-normalised over its candidates and added, the
first-stage ones times the weight. A cross-encoder trained on little data
(like one made here from a few hundred questions) keeps the lexical evidence
BM25 had instead of overriding it. The default, 1, is the best measured
(HotpotQA paragraphs, `benchmarks/rerank.py`: nDCG@10 0.9438 against 0.9034
for the cross-encoder alone, 0 here; 0.5 gave 0.9397 and 1.5 0.9489, so 1 is
a round value in a flat region, not a tuned optimum).

Any sentence-transformers ``CrossEncoder`` works: a hub id, a local folder,
or one made by ``ragline train cross-encoder``.
"""

from __future__ import annotations

import logging
import statistics
from typing import Annotated

from annotated_types import Ge

from ragline.engine.errors import RaglineError
from ragline.engine.index.docstore import ranked_passages
from ragline.engine.lm import model_cache
from ragline.engine.lm.packaged import canonical_model_id, resolve_model_source
from ragline.engine.optional import import_optional
from ragline.engine.settings import NonNegativeFloat, PositiveInt
from ragline.engine.stage import Stage
from ragline.engine.types import Hit, Query


def load_cross_encoder(name: str, device: str | None = None, max_length: int = 512):
    """A ``CrossEncoder`` with one output score. A plain sentence encoder (e.g.
    the packaged all-MiniLM-L6-v2) loads too, with an untrained scoring head:
    the starting point for training."""
    CrossEncoder = import_optional("sentence_transformers", needed_for="cross-encoder reranking").CrossEncoder
    from transformers.utils import logging as hf_logging

    source = resolve_model_source(name)
    # Loading an encoder without a head prints a load report; the caller knows.
    previous = hf_logging.get_verbosity()
    st_logger = logging.getLogger("sentence_transformers")
    st_level = st_logger.level
    hf_logging.set_verbosity_error()
    st_logger.setLevel(logging.ERROR)
    try:
        return CrossEncoder(source, num_labels=1, max_length=max_length, device=device or model_cache.default_device())
    except OSError as err:
        raise RaglineError(
            f"cannot load cross-encoder {name!r}: not a local folder, no packaged copy is installed, "
            f"and the hub did not provide it ({err.__class__.__name__}: {err})"
        ) from None
    finally:
        hf_logging.set_verbosity(previous)
        st_logger.setLevel(st_level)


def score_pairs(model, pairs: list[tuple[str, str]], batch_size: int = 64) -> list[float]:
    """Raw relevance logits, one per (query, passage) pair."""
    if not pairs:
        return []
    import torch

    scores = model.predict(pairs, batch_size=batch_size, activation_fn=torch.nn.Identity(),
                           show_progress_bar=False, convert_to_numpy=True)
    return [float(s) for s in scores]


def z_scores(values: list[float]) -> list[float]:
    """Values shifted to mean 0 and scaled to standard deviation 1 (left at 0
    when they are all equal)."""
    if not values:
        return []
    mean = statistics.fmean(values)
    spread = statistics.pstdev(values) or 1.0
    return [(v - mean) / spread for v in values]


class CrossEncoderRerank(Stage):
    """Rerank the first ``depth`` candidates of each query; keep ``top_k``."""

    name = "cross_encoder"

    def __init__(self, model: str, top_k: PositiveInt = 10, depth: PositiveInt = 100, batch_size: PositiveInt = 64,
                 max_length: Annotated[int, Ge(8)] = 512, first_stage_weight: NonNegativeFloat = 1.0,
                 device: str | None = None):
        self.model = model
        self.top_k = top_k
        self.depth = depth
        self.batch_size = batch_size
        self.max_length = max_length
        self.first_stage_weight = first_stage_weight
        self.device = device
        self.encoder = None

    def warm_up(self) -> None:
        device = self.device or model_cache.default_device()
        key = ("cross_encoder", canonical_model_id(self.model), device, self.max_length)
        self.encoder = model_cache.shared(key, lambda: load_cross_encoder(self.model, device, self.max_length))

    def run(self, batch: list[Query]) -> list[Query]:
        self.warm_up()
        candidates = [ranked_passages(query, self.depth) for query in batch]
        pairs = [(query.text, passage.indexed_text()) for query, passages in zip(batch, candidates)
                 for passage in passages]
        scores = iter(score_pairs(self.encoder, pairs, self.batch_size))
        for query, passages in zip(batch, candidates):
            by_id = {hit.id: hit for hit in query.ranking}
            mine = [next(scores) for _ in passages]
            if self.first_stage_weight:
                before = z_scores([by_id[p.id].score for p in passages])
                mine = [s + self.first_stage_weight * b for s, b in zip(z_scores(mine), before)]
            scored = sorted(zip(mine, passages), key=lambda item: -item[0])[: self.top_k]
            query.note(ranks_before=[by_id[p.id].rank for _, p in scored])
            query.ranking = [Hit(p.id, score, rank, self.name, by_id[p.id].store)
                             for rank, (score, p) in enumerate(scored, 1)]
            query.passages = [p for _, p in scored]
        return batch
