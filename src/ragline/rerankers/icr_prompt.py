"""The prompt in-context reranking reads: every candidate passage, then the
question, in one chat turn — and, when the candidates overflow the model's
window, the same passages cut evenly until they fit.

The prompt is the generator's own plain-answer prompt (``PromptBuilder`` with
``cite=False``): a system prompt that asks for answers from numbered
passages, the passages as ``[n] Title`` blocks, then ``Question: ...``. As in
the ICR paper's prompt, the passages come first and the question last, so
that the question's tokens can attend to every passage. Its "query rows" are
every token after the last passage (the question, the closing instruction
and the chat template's turn markers), as the paper's code takes every token
from its closing instruction to the end.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ragline.engine.errors import ConfigError
from ragline.engine.lm.prompt_spans import passage_spans
from ragline.engine.lm.prompts import PromptBuilder
from ragline.engine.types import Passage

log = logging.getLogger(__name__)

ICR_PROMPT = PromptBuilder(cite=False)
# The content-free query of the calibration forward (the paper's).
CALIBRATION_QUERY = "N/A"
# Below this many tokens of text per passage, cutting is no longer reranking.
MIN_PASSAGE_TOKENS = 16


@dataclass(frozen=True)
class ICRPrompt:
    input_ids: list[int]
    #: Half-open token range of each passage block ("[n] Title\ntext").
    passage_ranges: list[tuple[int, int]]

    @property
    def query_rows(self) -> list[int]:
        """The probed positions: every token after the last passage."""
        start = self.passage_ranges[-1][1] if self.passage_ranges else 0
        return list(range(start, len(self.input_ids)))


def icr_prompt(tokenizer, question: str, passages: Sequence[Passage], builder: PromptBuilder = ICR_PROMPT) -> ICRPrompt:
    ids, ranges = passage_spans(tokenizer, builder, question, passages)
    return ICRPrompt(ids, ranges)


def fit_to_window(tokenizer, question: str, passages: Sequence[Passage], window: int,
                  builder: PromptBuilder = ICR_PROMPT) -> tuple[list[Passage], int | None]:
    """(passages, cap): the passages as given when the prompts of the question
    and of the calibration query both fit in ``window`` tokens; else each
    passage's text cut to at most ``cap`` tokens, the largest cap that fits —
    long passages lose their tails, short ones stay whole. Refuses (ConfigError)
    when fitting would leave under ``MIN_PASSAGE_TOKENS`` tokens a passage."""
    passages = list(passages)
    texts = [_text_tokens(tokenizer, p.text) for p in passages]
    cap = None
    for _ in range(8):  # re-tokenising a cut text can shift a token or two; converges in one or two rounds
        kept = passages if cap is None else [_cut(p, offsets, cap) for p, offsets in zip(passages, texts)]
        longest = max(len(icr_prompt(tokenizer, q, kept, builder).input_ids) for q in (question, CALIBRATION_QUERY))
        excess = longest - window
        if excess <= 0:
            if cap is not None:
                log.info("ICR: %d passages cut to at most %d tokens each to fit the %d-token window",
                         len(passages), cap, window)
            return kept, cap
        cap = _water_level([min(len(t), cap) if cap is not None else len(t) for t in texts], excess)
        if cap < MIN_PASSAGE_TOKENS:
            raise ConfigError(f"icr: {len(passages)} passages do not fit the model's {window}-token window even cut to "
                              f"{MIN_PASSAGE_TOKENS} tokens each; rerank fewer (lower 'depth')")
    raise ConfigError(f"icr: could not fit {len(passages)} passages into the {window}-token window")


def _water_level(lengths: list[int], excess: int) -> int:
    """The largest cap c with sum(max(0, length − c)) ≥ excess: cutting every
    length to c removes at least ``excess`` tokens."""
    for cap in range(max(lengths, default=0), -1, -1):
        if sum(max(0, n - cap) for n in lengths) >= excess:
            return cap
    return 0


def _text_tokens(tokenizer, text: str) -> list[tuple[int, int]]:
    """Character offsets of ``text``'s tokens (as tokenised on its own)."""
    return [tuple(o) for o in tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]


def _cut(passage: Passage, offsets: list[tuple[int, int]], cap: int) -> Passage:
    if len(offsets) <= cap:
        return passage
    return dataclasses.replace(passage, text=passage.text[: offsets[cap - 1][1]] if cap else "")
