"""In-context reranking (ICR): a zero-shot reranker from a language model's
attention, two forwards per query whatever the number of candidates.

The first ``depth`` candidates go into one prompt, passages first and the
question last; a passage's score is the attention the question's tokens pay
to it, minus what a content-free query ("N/A") pays it (``icr_scoring.py``).
As in the paper's runs (``--reverse_doc_order``), the candidates are laid out
in reverse first-stage order: the first stage's best sits last, next to the
question.

Candidates that overflow the model's window are cut evenly (each passage's
text to at most the same number of tokens, the largest that fits; short
passages stay whole) rather than refused; the cut is noted in the trace. Too
many candidates to leave each ``MIN_PASSAGE_TOKENS`` tokens is a ConfigError.

``heads``: a retrieval-heads profile (``ragline calibrate heads``); the probe
then reads only the profile's chosen heads.
"""

from __future__ import annotations

import time

from ragline.engine.errors import ConfigError
from ragline.engine.index.docstore import ranked_passages
from ragline.engine.lm.causal_lm import DEFAULT_GENERATOR
from ragline.engine.settings import KernelChoice, PositiveInt
from ragline.engine.stage import Stage
from ragline.engine.types import Hit, Query


class ICRRerank(Stage):
    """Rerank the first ``depth`` candidates of each query; keep ``top_k``."""

    name = "icr"

    def __init__(self, model: str = DEFAULT_GENERATOR, depth: PositiveInt = 20, top_k: PositiveInt = 10,
                 backend: KernelChoice = "auto", calibrate: bool = True,
                 heads: str | None = None, mask_outliers: bool = True, device: str | None = None):
        """``calibrate``: subtract the content-free query's read (the paper's
        calibration); ``mask_outliers``: leave out a passage's outlier tokens
        from the calibrated sum, as the paper's code does."""
        self.model = model
        self.depth = depth
        self.top_k = top_k
        self.backend = backend
        self.calibrate = calibrate
        self.heads = heads
        self.mask_outliers = mask_outliers
        self.device = device
        self.scorer = None

    def warm_up(self) -> None:
        from ragline.engine.lm.causal_lm import load_causal_lm
        from ragline.rerankers.icr_scoring import InContextScorer
        from ragline.rerankers.retrieval_heads import RetrievalHeads

        chosen = None
        if self.heads is not None:
            profile = RetrievalHeads.load(self.heads)
            profile.check_model(self.model, "icr")
            chosen = profile.top
        model, tokenizer = load_causal_lm(self.model, device=self.device, dtype="auto")
        if chosen and any(layer >= model.config.num_hidden_layers or head >= model.config.num_attention_heads
                          for layer, head in chosen):
            raise ConfigError(f"icr: the heads profile {self.heads} names heads {self.model} does not have")
        self.scorer = InContextScorer(model, tokenizer, self.backend, chosen, self.calibrate, self.mask_outliers)

    def run(self, batch: list[Query]) -> list[Query]:
        self.warm_up()
        for query in batch:
            passages = ranked_passages(query, self.depth)
            by_id = {hit.id: hit for hit in query.ranking}
            start = time.perf_counter()
            # Reverse first-stage order: the first stage's best passage sits next to the question.
            scores, info = self.scorer(query.text, passages[::-1])
            scores = scores[::-1]
            order = sorted(range(len(passages)), key=lambda i: -scores[i])[: self.top_k]
            query.note(ranks_before=[by_id[passages[i].id].rank for i in order],
                       scoring_seconds=time.perf_counter() - start, **info)
            query.ranking = [Hit(passages[i].id, float(scores[i]), rank, self.name, by_id[passages[i].id].store)
                             for rank, i in enumerate(order, 1)]
            query.passages = [passages[i] for i in order]
        return batch
