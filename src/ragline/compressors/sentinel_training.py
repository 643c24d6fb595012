"""Training Sentinel's probe on HotpotQA: supporting sentences are the
positives, every other sentence of the question's ten paragraphs a negative.

Sentences are the file's own (exact labels, no splitter in the way); the
questions split by id (``split_by_question``), the probe is fitted on the
training side and its AUC reported on the held-out side. The
regularisation, and with ``select`` the number of (layer, head) features
kept (ranked by their own AUC), are chosen by cross-validation over whole
training questions.

What the probe reads and learns from is a recipe: ``BEST``, the default, is
the variant the compression benchmark measured best with both packaged
proxies; ``PAPER`` is Sentinel's original.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ragline.compressors.attention_features import POOLINGS, AttentionFeatures
from ragline.compressors.baselines import question_similarity
from ragline.compressors.sentences import SentenceUnit
from ragline.compressors.sentinel import FEATURE_SETS, LOG_OFFSET, SentinelProbe
from ragline.engine.data.hotpotqa import HotpotQuestion, paragraph_passage
from ragline.engine.errors import ConfigError, InputError
from ragline.engine.lm.encoders import DEFAULT_ENCODER
from ragline.engine.types import Passage


@dataclass(frozen=True)
class Recipe:
    pooling: str  # which tokens read the context (attention_features.POOLINGS)
    features: str  # "attention" or "attention+embedding"
    select: bool  # keep only the (layer, head) features cross-validation says help
    complete_only: bool  # learn only from questions whose evidence is all in their context


# benchmarks/compression.py, 41 held-out questions, support recall at 5x:
# SmolLM2 0.555 (paper) -> 0.833 (best), Gemma-3-270M 0.532 -> 0.837, against
# MiniLM sentence similarity's 0.758 (docs/results.md, "Context compression").
BEST = Recipe(pooling="last+question", features="attention+embedding", select=True, complete_only=True)
# The paper's: the answering (last) token's attention, every head, every
# question with a labelled supporting sentence.
PAPER = Recipe(pooling="last", features="attention", select=False, complete_only=False)
RECIPES = {"best": BEST, "paper": PAPER}


def recipe_named(name: str, **changes) -> Recipe:
    """The recipe ``name`` with the given fields changed (None: keep the recipe's)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown Sentinel recipe {name!r}; use one of {', '.join(RECIPES)}")
    return replace(RECIPES[name], **{key: value for key, value in changes.items() if value is not None})


def labelled_units(question: HotpotQuestion) -> tuple[list[Passage], list[SentenceUnit], list[int]]:
    """The question's paragraphs as passages, their sentences as units, and a
    0/1 label per unit (1 = a supporting fact)."""
    supporting = set(question.supporting)
    passages, units, labels = [], [], []
    for p_index, paragraph in enumerate(question.paragraphs):
        text = ""
        for s_index, sentence in enumerate(paragraph.sentences):
            clean = " ".join(sentence.split())
            if not clean:
                continue
            if text:
                text += " "
            start = len(text)
            text += clean
            units.append(SentenceUnit(p_index, start, len(text), clean))
            labels.append(int((paragraph.title, s_index) in supporting))
        passages.append(paragraph_passage(question.id, p_index, paragraph, text))
    return passages, units, labels


@dataclass
class TrainingSet:
    """Every labelled sentence of some questions: attention features (in the
    pooling asked for), the embedding similarity to the question when asked
    for, the 0/1 label and the question's index."""

    attention: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    similarity: np.ndarray | None = None


def extract(questions: Sequence[HotpotQuestion], features: AttentionFeatures, pooling: str = "last",
            encoder=None, progress: bool = False) -> TrainingSet:
    """The training set of ``questions`` (those with a labelled supporting
    sentence in their context); ``encoder``: a sentence encoder for the
    embedding similarity."""
    from tqdm import tqdm

    rows, similarities, labels, groups = [], [], [], []
    for number, question in enumerate(tqdm(questions, desc="attention features", unit="question", disable=not progress)):
        passages, units, unit_labels = labelled_units(question)
        if not units or not any(unit_labels):
            continue
        rows.append(features(question.question, passages, units, pooling))
        if encoder is not None:
            similarities.append(question_similarity(encoder, question.question, [u.text for u in units]))
        labels.extend(unit_labels)
        groups.extend([number] * len(unit_labels))
    if not rows:
        raise InputError("no question with labelled supporting sentences to learn from")
    return TrainingSet(np.concatenate(rows), np.asarray(labels), np.asarray(groups),
                       np.concatenate(similarities) if encoder is not None else None)


def log_features(x: np.ndarray) -> np.ndarray:
    """Log attention separates supporting sentences better than raw attention,
    which is heavy-tailed (cross-validated AUC 0.78 against 0.75 over 160
    HotpotQA training questions with SmolLM2)."""
    return np.log(x + LOG_OFFSET)


C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
# How many attention features a selection may keep (None: all of them).
K_GRID = (4, 8, 16, 32, 64, None)


def ranked_features(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Feature columns, best first, by how well each alone separates the
    labels (AUC, either direction)."""
    from sklearn.metrics import roc_auc_score

    separation = [abs(roc_auc_score(y, x[:, j]) - 0.5) for j in range(x.shape[1])]
    return np.argsort(separation, kind="stable")[::-1]


def choose_settings(x: np.ndarray, y: np.ndarray, groups: np.ndarray, extra: np.ndarray | None = None,
                    select: bool = False, folds: int = 5,
                    c_grid: Sequence[float] = C_GRID) -> tuple[float, int | None, float | None]:
    """The regularisation, (with ``select``) the number of attention features,
    and their mean AUC: the best over folds of whole questions of the
    training data; the features are ranked on each fold's own training part.
    ``x``: log attention features; ``extra``: columns always kept (the
    embedding similarity). The AUC is None when no fold holds both labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    splits = [(fit, score) for fit, score in GroupKFold(n_splits=min(folds, len(set(groups)))).split(x, y, groups)
              if len(set(y[fit])) == 2 and len(set(y[score])) == 2]
    orders = [ranked_features(x[fit], y[fit]) if select else None for fit, _ in splits]
    sizes = [k for k in K_GRID if k is None or k < x.shape[1]] if select else [None]
    best, best_auc = (c_grid[-1], None), None
    for k in sizes:
        for c in c_grid:
            aucs = []
            for (fit, score), order in zip(splits, orders):
                columns = order[:k] if k is not None else slice(None)
                design = _design(x[:, columns], extra)
                model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
                model.fit(design[fit], y[fit])
                aucs.append(auc(model.predict_proba(design[score])[:, 1], y[score]))
            if aucs and (best_auc is None or np.mean(aucs) > best_auc):
                best, best_auc = (c, k), float(np.mean(aucs))
    return (*best, best_auc)


def _design(x: np.ndarray, extra: np.ndarray | None) -> np.ndarray:
    return x if extra is None else np.concatenate([x, extra.reshape(len(x), -1)], axis=1)


def fit_probe(data: TrainingSet, proxy: str, layers: int, heads: int, pooling: str = "last", c: float = 1.0,
              selected: Sequence[int] | None = None, embedding_model: str | None = None) -> SentinelProbe:
    """A probe on ``data`` (raw attention features, fitted on their logs, plus
    the embedding similarity when ``data`` has it)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    probe = SentinelProbe(proxy=proxy, layers=layers, heads=heads, mean=[], scale=[], coef=[], intercept=0.0,
                          transform="log", pooling=pooling,
                          selected=None if selected is None else [int(i) for i in selected],
                          features="attention" if data.similarity is None else "attention+embedding",
                          embedding_model=None if data.similarity is None else embedding_model)
    x = probe.prepare(data.attention, data.similarity)
    scaler = StandardScaler().fit(x)
    classifier = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(x), data.labels)
    probe.mean, probe.scale = scaler.mean_.tolist(), np.where(scaler.scale_ > 0, scaler.scale_, 1.0).tolist()
    probe.coef, probe.intercept = classifier.coef_[0].tolist(), float(classifier.intercept_[0])
    return probe


def train_probe(data: TrainingSet, proxy: str, layers: int, heads: int, pooling: str = "last",
                c: float | None = None, select: bool = False, embedding_model: str | None = None) -> SentinelProbe:
    """Settings chosen by cross-validation over the training questions (``c``
    when None; with ``select``, how many attention features to keep), then
    one fit on all of them. The choice is recorded in ``probe.training``."""
    x = log_features(data.attention)
    k, cv_auc = None, None
    if len(set(data.groups)) >= 2 and (c is None or select):
        c, k, cv_auc = choose_settings(x, data.labels, data.groups, data.similarity, select,
                                       c_grid=C_GRID if c is None else (c,))
    c = 1.0 if c is None else c
    selected = ranked_features(x, data.labels)[:k] if k is not None else None
    probe = fit_probe(data, proxy, layers, heads, pooling, c, selected, embedding_model)
    probe.training = {"c": c, "selected_features": len(selected) if selected is not None else probe.attention_width,
                      "cv_auc": cv_auc}
    return probe


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def train_sentinel(questions: Sequence[HotpotQuestion], held_out: Sequence[HotpotQuestion], proxy: str,
                   out: str | Path, device: str | None = None, c: float | None = None, recipe: Recipe = BEST,
                   embedding_model: str = DEFAULT_ENCODER, progress: bool = False) -> dict:
    """``c``: the logistic regression's inverse regularisation; None chooses it
    by cross-validation over training questions. With ``recipe.complete_only``
    only questions whose every supporting sentence is in their context teach
    the probe (in the others a needed sentence is missing, and the probe would
    learn that the context holds nothing relevant)."""
    from ragline.engine.lm.causal_lm import load_causal_lm
    from ragline.engine.lm.encoders import load_sentence_encoder
    from ragline.engine.lm.packaged import canonical_model_id

    pooling, features, select, complete_only = recipe.pooling, recipe.features, recipe.select, recipe.complete_only

    if pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    if features not in FEATURE_SETS:
        raise ConfigError(f"unknown features {features!r}; use one of {', '.join(FEATURE_SETS)}")
    if complete_only:
        questions = [q for q in questions if q.evidence_complete]
        held_out = [q for q in held_out if q.evidence_complete]
    model, tokenizer = load_causal_lm(proxy, device=device, dtype="float32")
    reader = AttentionFeatures(model, tokenizer)
    encoder = load_sentence_encoder(embedding_model, device) if features == "attention+embedding" else None
    data = extract(questions, reader, pooling, encoder, progress)
    probe = train_probe(data, canonical_model_id(proxy), reader.layers, reader.heads, pooling, c, select,
                        embedding_model)
    summary = {"train_questions": len(questions), "train_sentences": int(len(data.labels)),
               "train_positives": int(data.labels.sum()),
               "train_auc": auc(probe.probabilities(data.attention, data.similarity), data.labels)}
    if held_out:
        test = extract(held_out, reader, pooling, encoder, progress)
        summary.update(test_questions=len(held_out), test_sentences=int(len(test.labels)),
                       test_auc=auc(probe.probabilities(test.attention, test.similarity), test.labels),
                       # The untrained baseline: the last token's mean attention, as the stage ranks without a probe.
                       test_auc_raw_attention=auc(test.attention[:, : reader.layers * reader.heads].mean(axis=1)
                                                  if pooling == "last+question" else test.attention.mean(axis=1),
                                                  test.labels))
    probe.training = {"data": "hotpotqa", "complete_only": complete_only, **probe.training, **summary}
    probe.save(out)
    return summary
