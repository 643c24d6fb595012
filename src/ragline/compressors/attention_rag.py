"""AttentionRAG: prune the context to what the model attends to when it is
about to answer.

1. The question becomes an answer prefix, the cue ("Where was X born?" →
   "X was born in"): written by the LM from a fixed few-shot prompt
   (``cue="generate"``), given as a string, or the generic "The answer is".
2. The context is cut into chunks of about ``chunk_tokens`` tokens (whole
   sentences). For each chunk the model reads chunk + question + cue and
   predicts the next token, the focus token. A chunk whose focus token is
   "none" (the prompt tells the model to say so when the chunk lacks the
   answer) is dropped.
3. The attention of one row over the chunk's tokens, summed across layers
   with heads averaged, ranks the tokens. ``read="predicting"`` reads the
   last cue position (the one predicting the focus token); ``"generated"``
   appends the focus token and reads its own row.
4. With ``top_k`` the sentences holding each chunk's ``top_k`` most attended
   tokens are kept (the compression ratio follows); with a ratio or token
   budget, sentences are taken in order of their most attended token (scaled
   by chunk length, so chunks compare) until the budget is spent.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
import torch
from annotated_types import Ge

from ragline.compressors.base import SentenceCompressor
from ragline.compressors.sentences import SentenceUnit, pack_in_order
from ragline.engine.errors import ConfigError
from ragline.engine.lm.attention_probe import AttentionProbe
from ragline.engine.lm.causal_lm import DEFAULT_GENERATOR
from ragline.engine.settings import KernelChoice, PositiveInt
from ragline.engine.types import Passage

GENERIC_CUE = "The answer is"
CUE_PROMPT = (
    "Rewrite each question as the first words of its answer.\n"
    "Question: Where was Marie Curie born?\nAnswer start: Marie Curie was born in\n"
    "Question: Which film came out first, Jaws or Alien?\nAnswer start: The film that came out first is\n"
    "Question: Who wrote the novel that the film Psycho is based on?\nAnswer start: The novel was written by\n"
    "Question: {question}\nAnswer start:"
)
Read = Literal["predicting", "generated"]
READS = typing.get_args(Read)


class AttentionRAG(SentenceCompressor):
    name = "attention_rag"

    def __init__(self, model: str = DEFAULT_GENERATOR, cue: str = "generate", chunk_tokens: Annotated[int, Ge(16)] = 512,
                 top_k: PositiveInt | None = None, read: Read = "predicting", drop_none: bool = True,
                 device: str | None = None, backend: KernelChoice = "auto", **budget):
        if top_k is not None and any(budget.get(k) is not None for k in ("ratio", "budget", "threshold")):
            raise ConfigError("attention_rag: give top_k or a budget (ratio, budget), not both")
        if top_k is not None:
            budget["threshold"] = 0.0  # units holding a top-k token score 0, the rest -inf
        super().__init__(**budget)
        self.model_name = model
        self.cue = cue
        self.chunk_tokens = chunk_tokens
        self.top_k = top_k
        self.read = read
        self.drop_none = drop_none
        self.device = device
        self.backend = backend
        self._model = self._tokenizer_lm = self._probe = None

    def warm_up(self) -> None:
        from ragline.engine.lm.causal_lm import load_causal_lm

        super().warm_up()
        self._model, self._tokenizer_lm = load_causal_lm(self.model_name, device=self.device, dtype="auto")
        self._probe = AttentionProbe(self._model, backend=self.backend)

    # -- the cue -------------------------------------------------------------------
    def make_cue(self, question: str) -> str:
        if self.cue != "generate":
            return self.cue or GENERIC_CUE
        self.warm_up()
        prompt = CUE_PROMPT.format(question=" ".join(question.split()))
        ids = self._tokenizer_lm(prompt, return_tensors="pt").input_ids.to(self._model.device)
        with torch.inference_mode():
            out = self._model.generate(ids, max_new_tokens=16, do_sample=False,
                                       pad_token_id=self._tokenizer_lm.pad_token_id)
        text = self._tokenizer_lm.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        cue = text.split("\n", 1)[0].strip()
        return cue if cue and not cue.lower().startswith("question") else GENERIC_CUE

    # -- scoring -------------------------------------------------------------------
    def score_units(self, question: str, passages: Sequence[Passage], units: Sequence[SentenceUnit]) -> list[float]:
        self.warm_up()
        cue = self.make_cue(question)
        scores = [float("-inf")] * len(units)
        window = getattr(self._model.config, "max_position_embeddings", None) or self.chunk_tokens
        for chunk in self._chunks(units, max(16, min(self.chunk_tokens, window - 96))):
            for index, score in zip(chunk, self._score_chunk(question, cue, [units[i] for i in chunk])):
                scores[index] = score
        return scores

    def _chunks(self, units: Sequence[SentenceUnit], chunk_tokens: int) -> list[list[int]]:
        lengths = [len(ids) for ids in self._tokenizer_lm([u.text for u in units], add_special_tokens=False).input_ids]
        return pack_in_order(lengths, chunk_tokens)

    def _score_chunk(self, question: str, cue: str, units: Sequence[SentenceUnit]) -> list[float]:
        """Per unit: its best token's attention (× chunk tokens), or its best
        token's rank negated (``top_k`` mode); -inf for a dropped chunk."""
        text, ranges = "", []
        for unit in units:
            sentence = " ".join(unit.text.split())
            text += (" " if text else "")
            ranges.append((len(text), len(text) + len(sentence)))
            text += sentence
        prompt = (f"{text}\n\nQuestion: {' '.join(question.split())}\n"
                  f"If the text above does not contain the answer, reply none.\nAnswer: {cue}")
        encoded = self._tokenizer_lm(prompt, return_offsets_mapping=True)
        offsets = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        context_end = len(text)
        in_context = (offsets[:, 1] > 0) & (offsets[:, 0] < context_end)
        token_positions = np.flatnonzero(in_context)
        input_ids = torch.tensor([encoded["input_ids"]])

        # Each context token is its own span.
        span_ids = torch.full((input_ids.shape[1],), -1, dtype=torch.long)
        span_ids[torch.from_numpy(token_positions)] = torch.arange(len(token_positions))
        result = self._probe.run(input_ids, span_ids, num_spans=len(token_positions))
        focus = int(result.last_logits[0].argmax())
        if self.drop_none and self._tokenizer_lm.decode([focus]).strip().lower().startswith("none"):
            return [float("-inf")] * len(units)
        if self.read == "generated":
            input_ids = torch.cat([input_ids, torch.tensor([[focus]])], dim=1)
            span_ids = torch.cat([span_ids, torch.tensor([-1])])
            result = self._probe.run(input_ids, span_ids, num_spans=len(token_positions))
        # (layers, 1, heads, 1, tokens) → heads averaged, layers summed.
        weights = result.attention[:, 0, :, 0, :].mean(dim=1).sum(dim=0).cpu().numpy()
        order = np.argsort(-weights, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(1, len(order) + 1)
        scaled = weights / max(weights.sum(), 1e-12) * len(weights)

        scores = []
        for start, end in ranges:
            tokens = (offsets[token_positions, 1] > start) & (offsets[token_positions, 0] < end)
            if not tokens.any():
                scores.append(float("-inf"))
            elif self.top_k is not None:
                scores.append(0.0 if rank[tokens].min() <= self.top_k else float("-inf"))
            else:
                scores.append(float(scaled[tokens].max()))
        return scores
