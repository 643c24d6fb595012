"""Attention sorting: let the generator's own attention decide the order.

Run the generator's prompt once, read the attention the last prompt token
pays to each passage, and sort the passages so that the most attended sits
last, next to the question; repeat for ``rounds`` rounds (each one forward
pass over the reordered prompt), then hand the order on.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ragline.engine.index.docstore import ranked_passages
from ragline.engine.lm.causal_lm import DEFAULT_GENERATOR
from ragline.engine.lm.prompts import PromptBuilder
from ragline.engine.settings import KernelChoice, PositiveInt
from ragline.engine.stage import Stage
from ragline.engine.types import Query


class AttentionSort(Stage):
    name = "attention_sort"
    orders_passages = True

    def __init__(self, model: str = DEFAULT_GENERATOR, passages: PositiveInt = 5, rounds: PositiveInt = 1,
                 per_token: bool = False, cite: bool = True, system_prompt: str | None = None,
                 device: str | None = None, backend: KernelChoice = "auto"):
        self.model = model
        self.passages = passages
        self.rounds = rounds
        self.per_token = per_token
        self.builder = PromptBuilder(system_prompt, cite)
        self.device = device
        self.backend = backend
        self.reader = None

    def warm_up(self) -> None:
        from ragline.engine.lm.causal_lm import load_causal_lm
        from ragline.reorderers.passage_attention import PassageAttention

        model, tokenizer = load_causal_lm(self.model, device=self.device, dtype="auto")
        self.reader = PassageAttention(model, tokenizer, self.builder, self.backend)

    def generator_prompt(self) -> dict[str, Any]:
        return self.builder.shared_settings(self.model, self.passages)

    def run(self, batch: list[Query]) -> list[Query]:
        self.warm_up()
        for query in batch:
            passages = ranked_passages(query, self.passages)
            order = list(range(len(passages)))
            start = time.perf_counter()
            for _ in range(self.rounds if len(passages) > 1 else 0):
                attention = self.reader(query.text, [passages[i] for i in order], self.per_token)
                # Ascending and stable: the most attended ends up last, ties keep their order.
                order = [order[i] for i in np.argsort(attention, kind="stable")]
            query.ranking = [query.ranking[i] for i in order] + query.ranking[len(passages):]
            query.passages = [passages[i] for i in order]
            query.note(order=[i + 1 for i in order], forward_passes=self.rounds if len(passages) > 1 else 0,
                       sorting_seconds=time.perf_counter() - start)
        return batch
