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

``answer_nll``: the mean negative log-likelihood per token of the gold answer,
teacher-forced after the very prompt the pipeline's ``generate`` stage
answered from (one extra forward per question). Unlike EM/F1 of a small
generator's greedy answer, it moves with every change of context, so it
tells methods apart on tens of questions. None without a generate stage or
where its backend cannot score text (http).

Every per-question mean in the summary comes with a bootstrap 95% interval
(``summary["intervals"]``, same keys); ``compare_runs`` pairs two runs by
question id.
"""

from __future__ import annotations

import collections
import re
import statistics
import string
from collections.abc import Sequence
from typing import Any

from ragline.engine.batch_run import OnRay
from ragline.engine.data.hotpotqa import HotpotQuestion, paragraph_passage
from ragline.engine.errors import ConfigError, InputError
from ragline.engine.index.docstore import fetch_passages, query_over
from ragline.engine.lm.prompts import strip_citations
from ragline.engine.pipeline import Pipeline
from ragline.engine.types import Query
from ragline.eval.intervals import METHOD, bootstrap_interval, paired_comparison

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
                complete_only: bool = False, progress: bool = False) -> tuple[list[dict], dict]:
    """``complete_only`` keeps the questions whose supporting facts are all in their context;
    ``progress`` shows a bar with an ETA on stderr (it moves after each pipeline batch, question
    by question as their gold answers are scored)."""
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
    return _run_and_score(questions, queries, pipeline, progress)


def _run_and_score(questions: Sequence[HotpotQuestion], queries: list[Query], pipeline: Pipeline | None,
                   progress: bool) -> tuple[list[dict], dict]:
    from tqdm import tqdm

    generator = _generate_stage(pipeline)
    # The pipeline's own batches, so that batching (and so every number) is
    # what one pipeline.run over all questions would give.
    step = pipeline.batch_size if pipeline is not None else max(1, len(queries))
    rows = []
    with tqdm(total=len(queries), desc="QA", unit="question", disable=not progress) as bar:
        for start, batch in _run_batches(pipeline, queries, step):
            rows.extend(_rows(questions[start: start + step], batch, generator))
            bar.update(len(batch))
    return rows, summarize(rows)


def score_queries(questions: Sequence[HotpotQuestion], queries: Sequence[Query],
                  scorer=None) -> tuple[list[dict], dict]:
    """Rows and summary for queries a pipeline has already run, one per
    question, in order. ``scorer``: a ``generate`` stage that scores the gold
    answer after each query's context (``answer_nll``) without generating —
    to compare contexts (compressors) by likelihood alone."""
    rows = _rows(questions, queries, scorer)
    return rows, summarize(rows)


def _rows(questions: Sequence[HotpotQuestion], queries: Sequence[Query], scorer) -> list[dict]:
    rows = []
    for question, query in zip(questions, queries, strict=True):
        row = _score(question, query)
        row["answer_nll"] = _answer_nll(scorer, query, question.answer)
        rows.append(row)
    return rows


def _run_batches(pipeline: Pipeline | OnRay | None, queries: list[Query], step: int):
    """(first index, batch) of ``queries`` as the pipeline returns them: batch
    by batch here, or every batch at once over a Ray actor pool (``OnRay``)."""
    if isinstance(pipeline, OnRay):
        done = pipeline.run(queries)
        yield from ((start, done[start: start + step]) for start in range(0, len(done), step))
        return
    for start in range(0, len(queries), step):
        batch = queries[start: start + step]
        yield start, pipeline.run(batch) if pipeline is not None else batch


def _generate_stage(pipeline: Pipeline | None):
    """The pipeline's ``generate`` stage, if it has one."""
    stages = pipeline.stages if pipeline is not None else []
    return next((s for s in stages if getattr(s, "name", None) == "generate"), None)


def _answer_nll(generator, query: Query, gold: str) -> float | None:
    if generator is None or not gold.strip():
        return None
    return generator.answer_nll(query, gold)


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
    kv = [{key: t.extra[key] for key in KV_STATS if key in t.extra} for t in query.trace if "kv_reuse" in t.extra]
    if kv:
        row["kv"] = kv[0]
    if row["prediction"] is not None:
        answer = strip_citations(row["prediction"])
        row["em"] = exact_match(answer, question.answer)
        row["f1"] = f1_score(answer, question.answer)
    return row


# What the generate stage's passage KV reuse did for a question (its trace
# entry): the mode (or why it was skipped), tokens read from cached blocks and
# tokens computed, where the blocks came from, and whether the layout of the
# same passages in the same order was reused whole.
KV_STATS = ("kv_reuse", "cached_tokens", "prefilled_tokens", "memory_hits", "disk_hits", "misses", "discarded",
            "layout_reused", "recomputed_tokens")
KV_TOTALS = ("cached_tokens", "prefilled_tokens", "memory_hits", "disk_hits", "misses", "discarded", "recomputed_tokens")


def kv_summary(rows: Sequence[dict]) -> dict[str, Any] | None:
    """Totals of the rows' KV statistics, the questions by mode, and the share
    of prompt tokens that came from the cache; None when no row reused KV."""
    kv = [r["kv"] for r in rows if "kv" in r]
    if not kv:
        return None
    modes: dict[str, int] = {}
    for stats in kv:
        modes[str(stats["kv_reuse"])] = modes.get(str(stats["kv_reuse"]), 0) + 1
    totals = {key: sum(stats.get(key, 0) for stats in kv) for key in KV_TOTALS}
    prompt_tokens = totals["cached_tokens"] + totals["prefilled_tokens"]
    return {"questions_by_mode": modes, **totals, "layouts_reused": sum(bool(s.get("layout_reused")) for s in kv),
            "cached_share": totals["cached_tokens"] / prompt_tokens if prompt_tokens else None}


# The per-question values the summary averages, each with a bootstrap interval.
MEANS = ("em", "f1", "answer_nll", "support_recall", "gold_paragraph_recall", "tokens_before", "tokens_after", "ttft")


def summarize(rows: Sequence[dict]) -> dict[str, Any]:
    values = {key: [r[key] for r in rows if r.get(key) is not None] for key in MEANS}
    means = {key: statistics.fmean(v) if v else None for key, v in values.items()}
    stages: dict[str, list[float]] = {}
    for row in rows:
        for stage, seconds in row["stage_seconds"].items():
            stages.setdefault(stage, []).append(seconds)
    before, after = means["tokens_before"], means["tokens_after"]
    intervals: dict[str, Any] = {key: _interval(v) for key, v in values.items()}
    intervals["stage_seconds"] = {stage: _interval(v) for stage, v in stages.items()}
    return {
        "questions": len(rows),
        "questions_with_complete_evidence": sum(r["evidence_complete"] for r in rows),
        **means,
        "compression_ratio": (before / after) if before and after else None,
        "stage_seconds": {stage: statistics.fmean(v) for stage, v in stages.items()},
        "kv": kv_summary(rows),
        "intervals": intervals,
        "interval_method": METHOD,
    }


def _interval(values: Sequence[float]) -> list[float] | None:
    interval = bootstrap_interval(values)
    return None if interval is None else list(interval)


def per_question_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of one per-question row by name; stage latencies as
    ``stage_seconds.<stage>``. Flags (``evidence_complete``) are not metrics."""
    metrics: dict[str, float] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            metrics.update({f"{key}.{k}": v for k, v in value.items() if _is_number(v)})
        elif _is_number(value):
            metrics[key] = value
    return metrics


def better_direction(metric: str) -> str | None:
    """``higher`` or ``lower``: which way a metric improves (None: unknown)."""
    if metric == "answer_nll" or metric.startswith(("stage_seconds", "tokens")) or metric in ("ttft", "seconds"):
        return "lower"
    if metric in ("em", "f1") or metric.endswith("recall"):
        return "higher"
    return None


def compare_runs(rows_a: Sequence[dict], rows_b: Sequence[dict]) -> dict[str, Any]:
    """Two runs' per-question rows paired by question id: for every metric
    both have, the paired comparison of B against A (``intervals.paired_comparison``)."""
    a, b = _by_id(rows_a, "A"), _by_id(rows_b, "B")
    shared = [qid for qid in a if qid in b]
    if not shared:
        raise InputError(f"the runs share no question ids (A has {len(a)}, B has {len(b)}): nothing to pair")
    metrics_a = {qid: per_question_metrics(a[qid]) for qid in shared}
    metrics_b = {qid: per_question_metrics(b[qid]) for qid in shared}
    names = sorted(dict.fromkeys(m for qid in shared for m in metrics_a[qid] if m in metrics_b[qid]), key=_report_order)
    comparisons = {}
    for name in names:
        pairs = [(metrics_a[q][name], metrics_b[q][name]) for q in shared if name in metrics_a[q] and name in metrics_b[q]]
        direction = better_direction(name)
        comparison = paired_comparison([x for x, _ in pairs], [y for _, y in pairs], direction != "lower")
        comparisons[name] = {"better": direction, **comparison}
    return {"paired": len(shared), "only_a": len(a) - len(shared), "only_b": len(b) - len(shared),
            "interval_method": METHOD, "metrics": comparisons}


def _report_order(metric: str) -> int:
    """The summary's order: answer quality, evidence, size, latency, then the rest."""
    if metric in MEANS:
        return MEANS.index(metric)
    return len(MEANS) + (0 if metric.startswith("stage_seconds.") else 1)


def _by_id(rows: Sequence[dict], run: str) -> dict[str, dict]:
    by_id: dict[str, dict] = {}
    for row in rows:
        if "id" not in row:
            raise InputError(f"run {run} has a per-question row without an id")
        if row["id"] in by_id:
            raise InputError(f"run {run} has question {row['id']!r} twice")
        by_id[row["id"]] = row
    return by_id


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
