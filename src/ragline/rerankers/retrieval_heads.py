"""A retrieval-heads profile: which attention heads of a model copy from the
context (Wu et al., 2024, "Retrieval Head Mechanistically Explains
Long-Context Factuality"), as measured by ``ragline calibrate heads``
(``retrieval_head_detection.py``).

The profile holds the retrieval score of every (layer, head), the heads
chosen (the highest scores) and the settings it was measured with. A stage
that reads only those heads (``icr`` with ``heads:``) refuses a profile made
for another model: head numbers mean nothing across models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragline.engine.artifacts import load_artifact, write_artifact
from ragline.engine.errors import ConfigError, InputError
from ragline.engine.lm.packaged import canonical_model_id

PROFILE_FORMAT = "ragline-retrieval-heads/1"


@dataclass
class RetrievalHeads:
    model: str  # canonical model id
    layers: int
    heads: int
    scores: list[list[float]]  # [layer][head]: retrieval score in [0, 1]
    top: list[list[int]]  # chosen [layer, head] pairs, highest score first
    settings: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        """Written whole or not at all (``engine/atomic.py``)."""
        write_artifact(path, PROFILE_FORMAT, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> RetrievalHeads:
        profile = load_artifact(cls, path, PROFILE_FORMAT, "retrieval-heads profile", "ragline calibrate heads")
        well_formed = (len(profile.scores) == profile.layers and all(len(row) == profile.heads for row in profile.scores)
                       and profile.top
                       and all(len(pair) == 2 and 0 <= pair[0] < profile.layers and 0 <= pair[1] < profile.heads
                               for pair in profile.top))
        if not well_formed:
            raise InputError(f"{path}: malformed retrieval-heads profile (scores are not {profile.layers} × "
                             f"{profile.heads}, or a chosen head lies outside them)")
        profile.top = [[int(layer), int(head)] for layer, head in profile.top]
        return profile

    def check_model(self, model: str, owner: str) -> None:
        if canonical_model_id(self.model) != canonical_model_id(model):
            raise ConfigError(f"{owner}: the retrieval-heads profile was measured on {self.model}, not on {model}: "
                              f"run 'ragline calibrate heads --model {model}'")
