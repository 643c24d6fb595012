"""The engine's BM25 must reproduce pyserini's own searcher exactly."""

import pytest

from ragline.engine.data.topics import read_qrels
from ragline.engine.retrieval_pipeline import retrieval_pipeline
from ragline.engine.types import Query
from ragline.eval.metrics import mean_scores

METRICS = ["map", "ndcg_cut_10"]


@pytest.fixture(scope="module")
def engine_run(vaswani_bm25_index, vaswani_queries):
    pipeline = retrieval_pipeline(str(vaswani_bm25_index), "bm25", k=1000, top_k=0)
    results = pipeline.run([Query(qid, text) for qid, text in vaswani_queries])
    return {q.id: {h.id: h.score for h in q.ranking} for q in results}


@pytest.fixture(scope="module")
def pyserini_run(vaswani_bm25_index, vaswani_queries):
    from ragline.retrievers.lucene_runtime import import_pyserini

    LuceneSearcher = import_pyserini("pyserini.search.lucene").LuceneSearcher

    searcher = LuceneSearcher(str(vaswani_bm25_index / "bm25"))
    searcher.set_bm25(0.9, 0.4)
    run = {}
    for qid, text in vaswani_queries:
        run[qid] = {hit.docid: hit.score for hit in searcher.search(text, k=1000)}
    return run


def test_engine_bm25_equals_pyserini_searcher(engine_run, pyserini_run, vaswani):
    qrels = read_qrels(vaswani / "qrels")
    ours = mean_scores(qrels, engine_run, METRICS)
    theirs = mean_scores(qrels, pyserini_run, METRICS)
    for metric in METRICS:
        assert ours[metric] == pytest.approx(theirs[metric], abs=1e-4)
    # Not only the means: the same documents with the same scores.
    assert engine_run.keys() == pyserini_run.keys()
    for qid in engine_run:
        assert engine_run[qid].keys() == pyserini_run[qid].keys()
        for docid, score in engine_run[qid].items():
            assert score == pytest.approx(pyserini_run[qid][docid], abs=1e-5)


def test_engine_bm25_matches_anserini_reference_figures(engine_run, vaswani):
    # Anserini's BM25 (k1=0.9, b=0.4, default analyzer) on Vaswani: MAP 0.2856, nDCG@10 0.4368.
    scores = mean_scores(read_qrels(vaswani / "qrels"), engine_run, METRICS)
    assert scores["map"] == pytest.approx(0.2856, abs=1e-4)
    assert scores["ndcg_cut_10"] == pytest.approx(0.4368, abs=1e-4)


def test_k1_b_change_the_ranking(vaswani_bm25_index, vaswani_queries):
    from ragline.retrievers.bm25 import BM25

    text = vaswani_queries[0][1]
    default = BM25(str(vaswani_bm25_index), k=20).search([text])[0]
    other = BM25(str(vaswani_bm25_index), k=20, k1=2.0, b=1.0).search([text])[0]
    assert [s for _, s in default] != [s for _, s in other]


def test_a_query_with_thousands_of_distinct_terms_works(vaswani_bm25_index):
    """Lucene allows 1,024 clauses per query by default; each distinct term is one."""
    import random
    import string

    from ragline.retrievers.bm25 import BM25

    rng = random.Random(0)
    noise = " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(7)) for _ in range(3000))
    (hits,) = BM25(str(vaswani_bm25_index), k=5).search([noise + " compact memories"])
    assert len(hits) == 5
