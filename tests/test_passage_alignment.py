"""A hit whose passage text is missing is dropped from the ranking too (and
logged), so every stage that pairs ranking[i] with passages[i] stays right."""

from __future__ import annotations

import logging

from ragline.engine.index.docstore import MemoryStore, ranked_passages
from ragline.engine.pipeline import Pipeline
from ragline.engine.stage import Stage
from ragline.engine.types import Hit, Passage, Query


def query_with_a_gap() -> Query:
    held = [Passage(pid, pid, f"text of {pid}") for pid in ("a", "c", "d")]
    store = MemoryStore(held)  # "b" is ranked but the store no longer has it
    hits = [Hit(pid, 1.0 / r, r, "bm25", store) for r, pid in enumerate("abcd", 1)]
    return Query("q", "question", ranking=hits)


def test_ranking_and_passages_stay_aligned_and_the_drop_is_logged(caplog):
    query = query_with_a_gap()
    with caplog.at_level(logging.WARNING, logger="ragline"):
        passages = ranked_passages(query, 3)
    assert [p.id for p in passages] == ["a", "c"]
    assert [h.id for h in query.ranking] == ["a", "c", "d"]
    assert "no passage text" in caplog.text and "b" in caplog.text


class Reverse(Stage):
    """Reorders like AttnRank: indexes the ranking by passage position."""

    name = "reverse"

    def run(self, batch):
        for query in batch:
            passages = ranked_passages(query, 3)
            order = list(reversed(range(len(passages))))
            query.ranking = [query.ranking[i] for i in order] + query.ranking[len(passages):]
            query.passages = [passages[i] for i in order]
        return batch


def test_a_reordering_stage_keeps_ids_and_texts_together():
    (result,) = Pipeline([Reverse()]).run([query_with_a_gap()])
    assert [h.id for h in result.ranking[: len(result.passages)]] == [p.id for p in result.passages]
    assert all(p.text == f"text of {p.id}" for p in result.passages)


def test_the_pipeline_fetch_at_the_end_leaves_the_ranking_and_logs_the_gap(caplog):
    class Keep(Stage):
        name = "keep"

        def run(self, batch):
            return batch

    with caplog.at_level(logging.WARNING, logger="ragline"):
        (result,) = Pipeline([Keep()], top_k=4).run([query_with_a_gap()])
    assert [h.id for h in result.ranking] == ["a", "b", "c", "d"]
    assert [p.id for p in result.passages] == ["a", "c", "d"]
    assert "no passage text" in caplog.text
