"""Sentinel: context compression by probing a small proxy model's attention.

Each sentence gets the proxy's attention features (``attention_features``:
one value per layer and head, from the token about to answer), and a
logistic-regression probe, trained offline (``ragline train sentinel``),
turns them into the probability that the sentence is needed. Without a
trained probe the stage ranks sentences by their mean feature — raw
attention, the untrained ablation.

The probe is a small JSON artifact: standardisation, coefficients, and what
the features came from (proxy model id, layers, heads, prompt layout), which
must match the proxy the stage runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragline.compressors.attention_features import PROMPT_LAYOUT, AttentionFeatures
from ragline.compressors.base import SentenceCompressor
from ragline.compressors.sentences import SentenceUnit
from ragline.engine.artifacts import load_artifact, write_artifact
from ragline.engine.errors import ConfigError, InputError
from ragline.engine.lm.causal_lm import DEFAULT_GENERATOR
from ragline.engine.lm.packaged import canonical_model_id
from ragline.engine.settings import PositiveInt
from ragline.engine.types import Passage

ARTIFACT_FORMAT = "ragline-sentinel/1"
LOG_OFFSET = 1e-3


@dataclass
class SentinelProbe:
    proxy: str
    layers: int
    heads: int
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    prompt_layout: str = PROMPT_LAYOUT
    #: Applied to the attention features before standardising: "log" (of
    #: feature + 1e-3; attention is heavy-tailed) or "none".
    transform: str = "log"
    training: dict[str, Any] = field(default_factory=dict)

    def prepare(self, features: np.ndarray) -> np.ndarray:
        if self.transform == "log":
            return np.log(features + LOG_OFFSET)
        if self.transform == "none":
            return features
        raise InputError(f"unknown Sentinel feature transform {self.transform!r}")

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        z = (self.prepare(features) - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.coef) + self.intercept)))

    def save(self, path: str | Path) -> None:
        write_artifact(path, ARTIFACT_FORMAT, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> SentinelProbe:
        probe = load_artifact(cls, path, ARTIFACT_FORMAT, "Sentinel probe", "ragline train sentinel")
        if not len(probe.mean) == len(probe.scale) == len(probe.coef) == probe.layers * probe.heads:
            raise InputError(f"{path}: malformed Sentinel probe (vector sizes do not match "
                             f"{probe.layers} layers × {probe.heads} heads)")
        return probe


class Sentinel(SentenceCompressor):
    name = "sentinel"

    def __init__(self, probe: str | None = None, proxy: str | None = None, max_context_tokens: PositiveInt = 4096,
                 device: str | None = None, backend: str = "auto", **budget):
        """``probe``: a trained probe file (None = raw attention); ``proxy``:
        the proxy LM (default: the probe's own, else SmolLM2-135M-Instruct)."""
        super().__init__(**budget)
        self.probe_path = probe
        self.proxy = proxy
        self.max_context_tokens = max_context_tokens
        self.device = device
        self.backend = backend
        self.classifier: SentinelProbe | None = None
        self.features: AttentionFeatures | None = None

    def warm_up(self) -> None:
        from ragline.engine.lm.causal_lm import load_causal_lm

        super().warm_up()
        if self.probe_path is not None:
            self.classifier = SentinelProbe.load(self.probe_path)
        proxy = self.proxy or (self.classifier.proxy if self.classifier else DEFAULT_GENERATOR)
        if self.classifier is not None and canonical_model_id(proxy) != canonical_model_id(self.classifier.proxy):
            raise ConfigError(f"the Sentinel probe {self.probe_path} was trained on {self.classifier.proxy}'s "
                              f"attention, not {proxy}'s")
        model, tokenizer = load_causal_lm(proxy, device=self.device, dtype="auto")
        self.features = AttentionFeatures(model, tokenizer, self.max_context_tokens, self.backend)
        if self.classifier is not None:
            shape = (self.features.layers, self.features.heads)
            if shape != (self.classifier.layers, self.classifier.heads):
                raise ConfigError(f"the Sentinel probe {self.probe_path} expects {self.classifier.layers} layers × "
                                  f"{self.classifier.heads} heads; the proxy has {shape[0]} × {shape[1]}")

    def score_units(self, question: str, passages: Sequence[Passage], units: Sequence[SentenceUnit]) -> list[float]:
        self.warm_up()
        features = self.features(question, passages, units)
        if self.classifier is None:
            return features.mean(axis=1).tolist()
        return self.classifier.probabilities(features).tolist()
