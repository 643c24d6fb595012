"""Scoring a retrieval pipeline on a topic set with relevance judgements.

Runs the pipeline over every topic, folds passage hits to documents (a
chunked index scores a document by its best passage), optionally drops a
hit on the query's own id, and scores the run with pytrec_eval.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ragline.engine.errors import InputError
from ragline.engine.pipeline import Pipeline
from ragline.engine.retrieval_pipeline import fold_to_documents
from ragline.engine.types import Query
from ragline.eval.metrics import mean_scores, per_query

_READABLE = re.compile(r"^(ndcg|recall|map|p|mrr|precision)@(\d+)$", re.IGNORECASE)
_TREC_NAMES = {"ndcg": "ndcg_cut", "recall": "recall", "map": "map_cut", "p": "P", "precision": "P", "mrr": "recip_rank"}


def trec_metric(name: str) -> str:
    """``nDCG@10`` → ``ndcg_cut_10``, ``MAP@100`` → ``map_cut_100``; trec_eval names pass through."""
    match = _READABLE.match(name.strip())
    if not match:
        return name.strip()
    family, cut = match.group(1).lower(), match.group(2)
    return "recip_rank" if family == "mrr" else f"{_TREC_NAMES[family]}_{cut}"


@dataclass
class RetrievalEvaluation:
    run: dict[str, list[tuple[str, float]]]
    per_query: dict[str, dict[str, float]]
    means: dict[str, float]
    seconds: float


def evaluate_pipeline(
    pipeline: Pipeline,
    topics: Sequence[tuple[str, str]],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Sequence[str],
    remove_query: bool = False,
) -> RetrievalEvaluation:
    judged = [(qid, text) for qid, text in topics if qid in qrels]
    if not judged:
        raise InputError("no topic has relevance judgements; do the query ids match the qrels?")
    start = time.perf_counter()
    results = pipeline.run([Query(qid, text) for qid, text in judged])
    seconds = time.perf_counter() - start
    run = {}
    for query in results:
        ranked = fold_to_documents(query.ranking)
        if remove_query:
            ranked = [(doc, score) for doc, score in ranked if doc != query.id]
        run[query.id] = ranked
    as_dict = {qid: dict(ranked) for qid, ranked in run.items()}
    names = [trec_metric(m) for m in metrics]
    return RetrievalEvaluation(run, per_query(qrels, as_dict, names), mean_scores(qrels, as_dict, names), seconds)


def check_qrels_ids(qrels: Mapping[str, Mapping[str, int]], topic_ids: set[str], doc_ids: set[str] | None, path) -> None:
    """Judgements about unknown queries or documents usually mean mismatched files."""
    unknown_queries = sorted(set(qrels) - topic_ids)
    if unknown_queries:
        raise InputError(f"qrels name {len(unknown_queries)} unknown query id(s), e.g. {unknown_queries[:3]}", path=path)
    if doc_ids is not None:
        unknown_docs = sorted({d for judged in qrels.values() for d in judged} - doc_ids)
        if unknown_docs:
            raise InputError(f"qrels name {len(unknown_docs)} unknown document id(s), e.g. {unknown_docs[:3]}", path=path)
