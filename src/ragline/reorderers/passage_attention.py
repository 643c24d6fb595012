"""How much attention the generator's last prompt token pays to each passage
of its own prompt — what AttnRank calibrates on and attention sorting sorts
by. One probed forward (SDPA kept), attention averaged over layers and heads;
``per_token`` divides each passage's mass by its length, so long passages do
not win by size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from ragline.engine.lm.attention_probe import AttentionProbe, span_ids_from_ranges
from ragline.engine.lm.prompt_spans import passage_spans
from ragline.engine.lm.prompts import PromptBuilder
from ragline.engine.types import Passage


class PassageAttention:
    def __init__(self, model, tokenizer, builder: PromptBuilder, backend: str = "auto"):
        self.model = model
        self.tokenizer = tokenizer
        self.builder = builder
        self.probe = AttentionProbe(model, backend=backend)

    def __call__(self, question: str, passages: Sequence[Passage], per_token: bool = False) -> np.ndarray:
        """(len(passages),) attention shares (summing to 1 over the passages)."""
        input_ids, ranges = passage_spans(self.tokenizer, self.builder, question, passages)
        span_ids = span_ids_from_ranges(ranges, len(input_ids))
        result = self.probe.run(torch.tensor([input_ids]), span_ids, num_spans=len(passages))
        mass = result.attention[:, 0, :, 0, :].mean(dim=(0, 1)).double().cpu().numpy()
        if per_token:
            mass = mass / np.maximum(np.array([e - s for s, e in ranges], dtype=float), 1)
        return mass / max(mass.sum(), 1e-12)


def template_fingerprint(tokenizer, builder: PromptBuilder) -> str:
    """Identifies the prompt a profile was measured on: system prompt,
    citation mode and chat template."""
    material = "\x1f".join([builder.system, str(builder.cite), tokenizer.chat_template or "plain"])
    return hashlib.sha1(material.encode()).hexdigest()[:16]
