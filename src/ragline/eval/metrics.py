"""Retrieval metrics, computed by pytrec_eval (trec_eval's own code).

Metric names are trec_eval's: ``ndcg_cut_10``, ``map``, ``map_cut_100``,
``recall_100``, ``P_10``, ``recip_rank``...
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping

import pytrec_eval

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]

DEFAULT_METRICS = ("ndcg_cut_10", "map", "recall_100")


def per_query(qrels: Qrels, run: Run, metrics: Iterable[str] = DEFAULT_METRICS) -> dict[str, dict[str, float]]:
    """``{qid: {metric: value}}`` for the judged queries of ``run``."""
    metrics = list(metrics)
    evaluator = pytrec_eval.RelevanceEvaluator(
        {q: dict(d) for q, d in qrels.items()}, _measures(metrics)
    )
    scores = evaluator.evaluate({q: dict(d) for q, d in run.items()})
    return {qid: {m: values[m] for m in metrics} for qid, values in scores.items()}


def mean_scores(qrels: Qrels, run: Run, metrics: Iterable[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Means over the judged queries; a judged query missing from the run counts as 0,
    as trec_eval's ``-c`` flag does."""
    metrics = list(metrics)
    scores = per_query(qrels, run, metrics)
    return {m: statistics.fmean(scores.get(q, {}).get(m, 0.0) for q in qrels) for m in metrics}


def _measures(metrics: list[str]) -> set[str]:
    """pytrec_eval wants measure families (``ndcg_cut``), trec_eval style names
    with the cut-off as a parameter (``ndcg_cut.10``)."""
    measures = set()
    for metric in metrics:
        family, _, cut = metric.rpartition("_")
        measures.add(f"{family}.{cut}" if cut.isdigit() and family else metric)
    return measures
