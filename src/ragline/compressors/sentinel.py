"""Sentinel: context compression by probing a small proxy model's attention.

Each sentence gets the proxy's attention features (``attention_features``:
one value per layer and head, read from the token about to answer, from the
question's tokens, or both), and a logistic-regression probe, trained
offline (``ragline train sentinel``), turns them into the probability that
the sentence is needed. Without a trained probe the stage ranks sentences by
their mean feature — raw attention, the untrained ablation.

Two options of the probe go beyond the paper's: it may read only a subset of
the (layer, head) features (``selected``, chosen in training), and it may
take the sentence's embedding similarity to the question as one more feature
(``features: attention+embedding``) — the attention signal and a sentence
encoder's, weighed by the same regression.

The probe is a small JSON artifact: standardisation, coefficients, and what
the features came from (proxy model id, layers, heads, prompt layout,
pooling, selection, sentence encoder), which must match what the stage runs.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ragline.compressors.attention_features import POOLINGS, PROMPT_LAYOUT, AttentionFeatures
from ragline.compressors.base import SentenceCompressor
from ragline.compressors.baselines import question_similarity
from ragline.compressors.sentences import SentenceUnit
from ragline.engine.artifacts import load_artifact, write_artifact
from ragline.engine.errors import ConfigError, InputError
from ragline.engine.lm.causal_lm import DEFAULT_GENERATOR
from ragline.engine.lm.packaged import canonical_model_id
from ragline.engine.settings import KernelChoice, PositiveInt
from ragline.engine.types import Passage

ARTIFACT_FORMAT = "ragline-sentinel/1"
LOG_OFFSET = 1e-3
FeatureSet = Literal["attention", "attention+embedding"]
FEATURE_SETS = typing.get_args(FeatureSet)


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
    #: Which positions read the context (``attention_features.POOLINGS``).
    pooling: str = "last"
    #: The attention features the regression reads (indices into the full
    #: layers × heads × readings vector); None: all of them.
    selected: list[int] | None = None
    #: "attention", or "attention+embedding": the sentence's cosine similarity
    #: to the question under ``embedding_model`` is the last feature.
    features: str = "attention"
    embedding_model: str | None = None
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def attention_width(self) -> int:
        """Length of the attention feature vector the proxy gives."""
        return self.layers * self.heads * (2 if self.pooling == "last+question" else 1)

    def heads_read(self) -> list[tuple[int, int]] | None:
        """The (layer, head) pairs the selected features come from (None: all),
        so that the proxy computes only those."""
        if self.selected is None:
            return None
        per_reading = self.layers * self.heads
        return sorted({divmod(index % per_reading, self.heads) for index in self.selected})

    @property
    def uses_embedding(self) -> bool:
        return self.features == "attention+embedding"

    def prepare(self, attention: np.ndarray, similarity: np.ndarray | None = None) -> np.ndarray:
        """The regression's input: the selected attention features, transformed,
        and the embedding similarity when the probe takes it."""
        x = attention if self.selected is None else attention[:, self.selected]
        if self.transform == "log":
            x = np.log(x + LOG_OFFSET)
        elif self.transform != "none":
            raise InputError(f"unknown Sentinel feature transform {self.transform!r}")
        if self.uses_embedding:
            if similarity is None:
                raise ValueError("this Sentinel probe takes the embedding similarity as a feature")
            x = np.concatenate([x, np.asarray(similarity, dtype=x.dtype).reshape(-1, 1)], axis=1)
        return x

    def probabilities(self, attention: np.ndarray, similarity: np.ndarray | None = None) -> np.ndarray:
        z = (self.prepare(attention, similarity) - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.coef) + self.intercept)))

    def save(self, path: str | Path) -> None:
        write_artifact(path, ARTIFACT_FORMAT, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> SentinelProbe:
        probe = load_artifact(cls, path, ARTIFACT_FORMAT, "Sentinel probe", "ragline train sentinel")
        if probe.pooling not in POOLINGS:
            raise InputError(f"{path}: unknown pooling {probe.pooling!r} (one of {', '.join(POOLINGS)})")
        if probe.features not in FEATURE_SETS:
            raise InputError(f"{path}: unknown features {probe.features!r} (one of {', '.join(FEATURE_SETS)})")
        if probe.selected is not None and not all(0 <= i < probe.attention_width for i in probe.selected):
            raise InputError(f"{path}: a selected feature lies outside the {probe.attention_width} attention features")
        if probe.selected is not None and (not probe.selected or len(set(probe.selected)) != len(probe.selected)):
            raise InputError(f"{path}: 'selected' must name distinct attention features (null for all of them)")
        if probe.uses_embedding and not probe.embedding_model:
            raise InputError(f"{path}: a probe on attention+embedding features must name its embedding_model")
        width = (probe.attention_width if probe.selected is None else len(probe.selected)) + probe.uses_embedding
        if not len(probe.mean) == len(probe.scale) == len(probe.coef) == width:
            raise InputError(f"{path}: malformed Sentinel probe (vector sizes do not match "
                             f"{probe.layers} layers × {probe.heads} heads, pooling {probe.pooling}, "
                             f"{'selected ' + str(len(probe.selected)) if probe.selected else 'all'} features"
                             f"{' + embedding' if probe.uses_embedding else ''}: {width})")
        return probe


class Sentinel(SentenceCompressor):
    name = "sentinel"

    def __init__(self, probe: str | None = None, proxy: str | None = None, max_context_tokens: PositiveInt = 4096,
                 device: str | None = None, backend: KernelChoice = "auto", features: FeatureSet | None = None,
                 **budget):
        """``probe``: a trained probe file (None = raw attention); ``proxy``:
        the proxy LM (default: the probe's own, else SmolLM2-135M-Instruct);
        ``features``: ``attention`` or ``attention+embedding`` — what the probe
        was trained on (default: the probe's; the embedding needs a probe)."""
        super().__init__(**budget)
        if features == "attention+embedding" and probe is None:
            raise ConfigError("sentinel: features attention+embedding needs a trained probe "
                              "(ragline train sentinel --features attention+embedding)")
        self.probe_path = probe
        self.proxy = proxy
        self.feature_set = features
        self.max_context_tokens = max_context_tokens
        self.device = device
        self.backend = backend
        self.classifier: SentinelProbe | None = None
        self.features: AttentionFeatures | None = None
        self._encoder = None

    def warm_up(self) -> None:
        from ragline.engine.lm.causal_lm import load_causal_lm

        super().warm_up()
        if self.probe_path is not None:
            self.classifier = SentinelProbe.load(self.probe_path)
        proxy = self.proxy or (self.classifier.proxy if self.classifier else DEFAULT_GENERATOR)
        if self.classifier is not None and canonical_model_id(proxy) != canonical_model_id(self.classifier.proxy):
            raise ConfigError(f"the Sentinel probe {self.probe_path} was trained on {self.classifier.proxy}'s "
                              f"attention, not {proxy}'s")
        if self.classifier is not None and self.feature_set not in (None, self.classifier.features):
            raise ConfigError(f"the Sentinel probe {self.probe_path} was trained on {self.classifier.features} "
                              f"features, not {self.feature_set}")
        if self.classifier is not None and self.classifier.uses_embedding:
            from ragline.engine.lm.encoders import load_sentence_encoder

            self._encoder = load_sentence_encoder(self.classifier.embedding_model, self.device)
        model, tokenizer = load_causal_lm(proxy, device=self.device, dtype="auto")
        self.features = AttentionFeatures(model, tokenizer, self.max_context_tokens, self.backend)
        if self.classifier is not None:
            shape = (self.features.layers, self.features.heads)
            if shape != (self.classifier.layers, self.classifier.heads):
                raise ConfigError(f"the Sentinel probe {self.probe_path} expects {self.classifier.layers} layers × "
                                  f"{self.classifier.heads} heads; the proxy has {shape[0]} × {shape[1]}")

    def score_units(self, question: str, passages: Sequence[Passage], units: Sequence[SentenceUnit]) -> list[float]:
        self.warm_up()
        if self.classifier is None:
            return self.features(question, passages, units).mean(axis=1).tolist()
        attention = self.features(question, passages, units, self.classifier.pooling, self.classifier.heads_read())
        similarity = (question_similarity(self._encoder, question, [u.text for u in units])
                      if self.classifier.uses_embedding else None)
        return self.classifier.probabilities(attention, similarity).tolist()
