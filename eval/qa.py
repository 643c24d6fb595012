"""Question answering end to end: a pipeline scored on HotpotQA-format data.

Settings:
- ``distractor``: each question's own ten paragraphs (two gold, eight
  distractors) are its candidates, in their given order; the pipeline must
  then hold only stages that work on candidates (rerank, compress, reorder,
  generate), and may be omitted to measure the raw context.
- ``gold``: as ``distractor``, with only the gold (supporting) paragraphs:
  the ceiling that perfect retrieval would give the generator.
- ``open``: the pipeline retrieves from a shared index over all paragraphs
  (``ragline convert hotpotqa-corpus`` writes that corpus).

Answers are scored without their citation marks (``[1]``).

Supporting-sentence recall counts the labelled sentences present in the
question's context; questions with none have no value. Per question: answer EM and F1 (SQuAD normalisation) when the pipeline
generates an answer, supporting-sentence recall of the context that reaches
the generator, gold-paragraph recall of the passages, context tokens before
and after compression, and per-stage latency (and time to first token when
the generator reports one).
"""

from __future__ import annotations

import collections
import re
import statistics
import string
from collections.abc import Sequence
from typing import Any

from ragline.engine.data.hotpotqa import HotpotQuestion, paragraph_passage
from ragline.engine.errors import ConfigError
from ragline.engine.index.docstore import fetch_passages, query_over
from ragline.engine.lm.prompts import strip_citations
from ragline.engine.pipeline import Pipeline
from ragline.engine.types import Query

SETTINGS = ("distractor", "gold", "open")
_TOKEN = re.compile(r"\w+|[^\w\s]")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str) -> float:
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    # HotpotQA's scorer: yes/no/noanswer only match exactly.
    if {" ".join(predicted), " ".join(gold)} & {"yes", "no", "noanswer"} and predicted != gold:
        return 0.0
    common = collections.Counter(predicted) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def count_tokens(text: str) -> int:
    """Words and punctuation marks: a tokenizer-independent size of a context."""
    return len(_TOKEN.findall(text))


def _squash(text: str) -> str:
    return " ".join(text.split())


def candidate_pool(question: HotpotQuestion, gold_only: bool = False) -> Query:
    """The question with its own paragraphs (or only the gold ones) as the
    ranking, in their given order."""
    gold = set(question.gold_titles)
    passages = [paragraph_passage(question.id, i, p)
                for i, p in enumerate(question.paragraphs) if not gold_only or p.title in gold]
    return query_over(question.id, question.question, passages)


def evaluate_qa(questions: Sequence[HotpotQuestion], pipeline: Pipeline | None, setting: str = "distractor",
                complete_only: bool = False) -> tuple[list[dict], dict]:
    """``complete_only`` keeps the questions whose supporting facts are all in their context."""
    if complete_only:
        questions = [q for q in questions if q.evidence_complete]
    if setting not in SETTINGS:
        raise ConfigError(f"unknown QA setting {setting!r}; use {' or '.join(SETTINGS)}")
    if setting == "open" and pipeline is None:
        raise ConfigError("the open setting needs a pipeline with a retriever")
    if setting != "open" and pipeline is not None and any(s.is_retriever for s in pipeline.stages):
        raise ConfigError(f"in the {setting} setting the candidates are given: the pipeline must not retrieve")
    if setting != "open":
        queries = [candidate_pool(q, gold_only=setting == "gold") for q in questions]
    else:
        queries = [Query(q.id, q.question) for q in questions]
    if pipeline is not None:
        queries = pipeline.run(queries)
    rows = [_score(question, query) for question, query in zip(questions, queries)]
    return rows, summarize(rows)


def _score(question: HotpotQuestion, query: Query) -> dict[str, Any]:
    passages = query.passages or fetch_passages(query.ranking)
    full_context = "\n\n".join(p.indexed_text() for p in passages)
    context = query.context if query.context is not None else full_context
    squashed = _squash(context)
    evidence = question.supporting_sentences()
    gold_titles = set(question.gold_titles)
    row: dict[str, Any] = {
        "id": question.id,
        "type": question.type,
        "evidence_complete": question.evidence_complete,
        "answer": question.answer,
        "prediction": None if query.answer is None else query.answer.text,
        "support_recall": sum(_squash(s) in squashed for s in evidence) / len(evidence) if evidence else None,
        "gold_paragraph_recall": len(gold_titles & {p.title for p in passages}) / len(gold_titles) if gold_titles else None,
        "tokens_before": count_tokens(full_context),
        "tokens_after": count_tokens(context),
        "stage_seconds": {t.stage: t.seconds / max(1, t.batch_size) for t in query.trace},
    }
    ttft = [t.extra["ttft"] for t in query.trace if "ttft" in t.extra]
    if ttft:
        row["ttft"] = ttft[0]
    if row["prediction"] is not None:
        answer = strip_citations(row["prediction"])
        row["em"] = exact_match(answer, question.answer)
        row["f1"] = f1_score(answer, question.answer)
    return row


def summarize(rows: Sequence[dict]) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return statistics.fmean(values) if values else None

    before, after = mean("tokens_before"), mean("tokens_after")
    stages: dict[str, list[float]] = {}
    for row in rows:
        for stage, seconds in row["stage_seconds"].items():
            stages.setdefault(stage, []).append(seconds)
    return {
        "questions": len(rows),
        "questions_with_complete_evidence": sum(r["evidence_complete"] for r in rows),
        "em": mean("em"),
        "f1": mean("f1"),
        "support_recall": mean("support_recall"),
        "gold_paragraph_recall": mean("gold_paragraph_recall"),
        "tokens_before": before,
        "tokens_after": after,
        "compression_ratio": (before / after) if before and after else None,
        "ttft": mean("ttft"),
        "stage_seconds": {stage: statistics.fmean(v) for stage, v in stages.items()},
    }
