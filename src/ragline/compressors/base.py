"""What every sentence-level compressor shares: take the top passages, split
them into sentences, score the sentences (the one thing each method defines),
keep the best within a budget, and write the kept text to ``Query.context``.

Budgets, counted in the generator's tokenizer:
- ``ratio``: the fraction of the context's tokens to keep (0.2 = 5× compression);
- ``budget``: a number of tokens;
- ``threshold``: every sentence scoring at least this (for methods whose
  scores are probabilities), no token budget.
Selection is greedy by score (a sentence that does not fit is skipped and
smaller ones may still fit); kept sentences stay in their original order.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence

from ragline.compressors.sentences import SentenceUnit, kept_ranges, render_context, sentence_units
from ragline.engine.errors import ConfigError
from ragline.engine.index.docstore import ranked_passages
from ragline.engine.lm.causal_lm import DEFAULT_GENERATOR
from ragline.engine.settings import Fraction, NonNegativeInt, PositiveInt
from ragline.engine.stage import Stage
from ragline.engine.types import Passage, Query


class SentenceCompressor(Stage):
    def __init__(self, ratio: Fraction | None = None, budget: NonNegativeInt | None = None, threshold: float | None = None,
                 passages: PositiveInt = 10, tokenizer: str = DEFAULT_GENERATOR):
        chosen = [name for name, value in (("ratio", ratio), ("budget", budget), ("threshold", threshold))
                  if value is not None]
        if len(chosen) > 1:
            raise ConfigError(f"{self.name}: give one of ratio, budget or threshold, not {' and '.join(chosen)}")
        if not chosen:
            ratio = 0.5
        self.ratio, self.budget, self.threshold = ratio, budget, threshold
        self.passages = passages
        self.tokenizer_name = tokenizer
        self._tokenizer = None

    # -- what each method defines ------------------------------------------------
    @abc.abstractmethod
    def score_units(self, question: str, passages: Sequence[Passage], units: Sequence[SentenceUnit]) -> list[float]:
        """One relevance score per sentence unit (higher = keep)."""

    # -- shared ------------------------------------------------------------------
    def warm_up(self) -> None:
        from transformers import AutoTokenizer

        from ragline.engine.lm.packaged import resolve_model_source

        self._tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(self.tokenizer_name))

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        self.warm_up()
        if not texts:
            return []
        return [len(ids) for ids in self._tokenizer(list(texts), add_special_tokens=False).input_ids]

    def run(self, batch: list[Query]) -> list[Query]:
        self.warm_up()
        for query in batch:
            passages = ranked_passages(query, self.passages)
            query.passages = passages
            units = sentence_units(passages)
            start = time.perf_counter()
            scores = self.score_units(query.text, passages, units) if units else []
            seconds = time.perf_counter() - start
            lengths = self.count_tokens([u.text for u in units])
            keep = self.select(scores, lengths)
            query.context = render_context(passages, units, keep)
            query.kept = kept_ranges(passages, units, keep)
            query.note(sentences=len(units), kept=len(keep), tokens_before=sum(lengths),
                       tokens_after=sum(lengths[i] for i in keep), scoring_seconds=seconds)
        return batch

    def select(self, scores: Sequence[float], lengths: Sequence[int]) -> list[int]:
        """Indices of the kept units, in original order."""
        if self.threshold is not None:
            return [i for i, s in enumerate(scores) if s >= self.threshold]
        budget = self.budget if self.budget is not None else self.ratio * sum(lengths)
        kept, used = [], 0
        for index in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
            if scores[index] == float("-inf"):  # a method's "never keep"
                break
            if used + lengths[index] <= budget:
                kept.append(index)
                used += lengths[index]
        return sorted(kept)
