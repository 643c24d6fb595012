"""AttnRank: put the most relevant passages where the generator looks.

A profile (``ragline calibrate attnrank``) says how much attention the
generator's last prompt token pays to each of N passage slots of its prompt,
averaged over real prompts — typically high at both ends and low in the
middle, the "attention basin". The stage takes the passages in relevance
order (the retriever's or reranker's ranking) and places the most relevant in
the slot with the most attention, the second in the next, and so on.

For a number of passages other than the profile's N, the profile is
linearly interpolated over relative slot position (slot i of n sits at
(i + ½) / n); a profile measured at the N you run is the faithful one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragline.engine.artifacts import load_artifact, write_artifact
from ragline.engine.errors import ConfigError, InputError
from ragline.engine.index.docstore import ranked_passages
from ragline.engine.lm.causal_lm import DEFAULT_GENERATOR
from ragline.engine.lm.packaged import canonical_model_id
from ragline.engine.lm.prompts import PromptBuilder
from ragline.engine.settings import PositiveInt
from ragline.engine.stage import Stage
from ragline.engine.types import Query

PROFILE_FORMAT = "ragline-attnrank/1"


@dataclass
class AttentionProfile:
    model: str
    slots: int
    template: str  # template_fingerprint of the prompt it was measured on
    profile: list[float]  # mean attention share per slot
    spread: list[float]  # standard deviation per slot
    per_token: bool = False
    calibration: dict[str, Any] = field(default_factory=dict)

    def for_slots(self, n: int) -> np.ndarray:
        """The profile at ``n`` slots (interpolated when n differs from N)."""
        values = np.asarray(self.profile, dtype=float)
        if n == self.slots:
            return values
        centres = (np.arange(self.slots) + 0.5) / self.slots
        return np.interp((np.arange(n) + 0.5) / n, centres, values)

    def save(self, path: str | Path) -> None:
        write_artifact(path, PROFILE_FORMAT, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> AttentionProfile:
        profile = load_artifact(cls, path, PROFILE_FORMAT, "AttnRank profile", "ragline calibrate attnrank")
        if len(profile.profile) != profile.slots or profile.slots < 1:
            raise InputError(f"{path}: malformed AttnRank profile ({len(profile.profile)} values for "
                             f"{profile.slots} slots)")
        return profile


def basin_order(relevance_ranked: list, profile: np.ndarray) -> list:
    """Items given most relevant first, laid out so that the i-th most relevant
    sits in the slot with the i-th highest attention."""
    slots_by_attention = np.argsort(-profile, kind="stable")
    placed: list = [None] * len(relevance_ranked)
    for item, slot in zip(relevance_ranked, slots_by_attention):
        placed[int(slot)] = item
    return placed


class AttnRank(Stage):
    name = "attnrank"
    orders_passages = True

    def __init__(self, profile: str, passages: PositiveInt = 5, model: str = DEFAULT_GENERATOR, cite: bool = True,
                 system_prompt: str | None = None):
        """``model``, ``cite`` and ``system_prompt`` describe the generator the
        passages go to; the profile must have been measured on that prompt."""
        self.profile_path = profile
        self.passages = passages
        self.model = model
        self.builder = PromptBuilder(system_prompt, cite)
        self.profile: AttentionProfile | None = None

    def warm_up(self) -> None:
        from transformers import AutoTokenizer

        from ragline.engine.lm.packaged import resolve_model_source
        from ragline.reorderers.passage_attention import template_fingerprint

        profile = AttentionProfile.load(self.profile_path)
        if canonical_model_id(profile.model) != canonical_model_id(self.model):
            raise ConfigError(f"the AttnRank profile {self.profile_path} was measured on {profile.model}, "
                              f"not on the generator {self.model}: calibrate one for it")
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(self.model))
        if profile.template != template_fingerprint(tokenizer, self.builder):
            raise ConfigError(f"the AttnRank profile {self.profile_path} was measured on another prompt "
                              "(system prompt, citation mode or chat template differ): calibrate one for this prompt")
        self.profile = profile

    def generator_prompt(self) -> dict[str, Any]:
        return self.builder.shared_settings(self.model, self.passages)

    def run(self, batch: list[Query]) -> list[Query]:
        self.warm_up()
        for query in batch:
            passages = ranked_passages(query, self.passages)
            profile = self.profile.for_slots(len(passages))
            order = basin_order(list(range(len(passages))), profile)
            head = [query.ranking[i] for i in order]
            query.ranking = head + query.ranking[len(passages):]
            query.passages = [passages[i] for i in order]
            query.note(order=[i + 1 for i in order], interpolated=len(passages) != self.profile.slots)
        return batch
