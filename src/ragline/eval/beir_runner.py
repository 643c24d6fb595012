"""``ragline eval beir``: a retrieval pipeline scored on a BEIR dataset."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from ragline.engine.data.topics import read_qrels, read_topics
from ragline.engine.pipeline import Pipeline
from ragline.eval.beir_datasets import BM25_FLAT_NDCG10, SELF_RETRIEVING, BeirDataset
from ragline.eval.report import package_versions, pipeline_provenance, write_results
from ragline.eval.retrieval_eval import RetrievalEvaluation, check_qrels_ids, evaluate_pipeline, trec_metric

DEFAULT_METRICS = ("nDCG@10", "Recall@100", "MAP@100")


def evaluate_beir(dataset: BeirDataset, pipeline: Pipeline, metrics=DEFAULT_METRICS, out: Path | None = None,
                  remove_query: bool | None = None) -> tuple[RetrievalEvaluation, dict[str, Any]]:
    topics = read_topics(dataset.queries)
    qrels = read_qrels(dataset.qrels)
    check_qrels_ids(qrels, {qid for qid, _ in topics}, None, dataset.qrels)
    if remove_query is None:
        remove_query = dataset.name in SELF_RETRIEVING
    evaluation = evaluate_pipeline(pipeline, topics, qrels, metrics, remove_query=remove_query)
    summary = {
        "dataset": dataset.name,
        "path": str(dataset.root.resolve()),
        "split": dataset.split,
        "queries": len(evaluation.run),
        "metrics": evaluation.means,
        "reference": reference_for(dataset.name, metrics),
        "remove_query": remove_query,
        "seconds": round(evaluation.seconds, 3),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": pipeline_provenance(pipeline),
        "versions": package_versions(),
    }
    if out is not None:
        write_results(out, evaluation.run, evaluation.per_query, summary)
    return evaluation, summary


def reference_for(name: str, metrics) -> dict[str, float]:
    """Published BM25-flat figures for this dataset, keyed like our metrics."""
    ndcg = trec_metric("nDCG@10")
    if name in BM25_FLAT_NDCG10 and ndcg in {trec_metric(m) for m in metrics}:
        return {ndcg: BM25_FLAT_NDCG10[name]}
    return {}
