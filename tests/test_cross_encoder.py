"""Cross-encoder reranking and training a cross-encoder from a packaged encoder."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys

import pytest

from ragline.engine.data.hotpotqa import split_by_question
from ragline.engine.errors import ConfigError, InputError
from ragline.engine.index.docstore import MemoryStore
from ragline.engine.pipeline import Pipeline
from ragline.engine.types import Hit, Passage, Query
from ragline.rerankers.cross_encoder import CrossEncoderRerank, load_cross_encoder, score_pairs
from ragline.rerankers.cross_encoder_training import (
    Pair,
    TrainingSettings,
    pairs_from_hotpotqa,
    pairs_from_qrels,
    train_cross_encoder,
)

# Two questions (20 pairs) per step, short inputs, large steps: about a minute on two cores.
TINY = TrainingSettings(epochs=1, batch_size=20, learning_rate=1e-4, head_learning_rate=2e-3, max_length=96, seed=0)


@pytest.fixture(scope="module")
def split(hotpotqa_questions):
    """(train, test) questions that have a gold paragraph among their ten."""
    return tuple([q for q in part if set(q.gold_titles) & {p.title for p in q.paragraphs}]
                 for part in split_by_question(hotpotqa_questions, 0.3, seed=0))


@pytest.fixture(scope="module")
def trained(split, tmp_path_factory):
    """A cross-encoder trained for 24 steps on 48 training questions (480 pairs)."""
    out = tmp_path_factory.mktemp("ce") / "model"
    summary = train_cross_encoder(pairs_from_hotpotqa(split[0][:48]), "all-MiniLM-L6-v2", out, TINY, device="cpu",
                                  progress=False)
    assert summary["steps"] == 24 and summary["queries"] == 48
    return out


def gold_ordering_accuracy(model, questions) -> float:
    """The fraction of (gold, distractor) paragraph pairs scored in the right order."""
    correct = []
    for question in questions:
        gold = set(question.gold_titles)
        texts = [f"{p.title}\n{p.text}" for p in question.paragraphs]
        scores = score_pairs(model, [(question.question, t) for t in texts])
        golds = [s for s, p in zip(scores, question.paragraphs) if p.title in gold]
        others = [s for s, p in zip(scores, question.paragraphs) if p.title not in gold]
        correct += [g > o for g in golds for o in others]
    return statistics.fmean(correct)


def test_the_split_is_by_question_deterministic_and_disjoint(hotpotqa_questions):
    train, test = split_by_question(hotpotqa_questions, 0.3, seed=0)
    assert not {q.id for q in train} & {q.id for q in test}
    assert len(train) + len(test) == len(hotpotqa_questions)
    assert 0.25 < len(test) / len(hotpotqa_questions) < 0.35
    assert [q.id for q in split_by_question(list(reversed(hotpotqa_questions)), 0.3, seed=0)[1]] == \
        [q.id for q in reversed(test)]
    assert {q.id for q in split_by_question(hotpotqa_questions, 0.3, seed=1)[1]} != {q.id for q in test}


def test_hotpotqa_pairs_label_gold_paragraphs(split):
    question = split[0][0]
    pairs = pairs_from_hotpotqa([question])
    assert len(pairs) == len(question.paragraphs)
    present = {p.title for p in question.paragraphs}
    assert {p.passage.split("\n")[0] for p in pairs if p.label == 1} == set(question.gold_titles) & present


@pytest.mark.slow
def test_a_short_training_run_beats_the_untrained_head_on_held_out_questions(trained, split):
    import torch

    held_out = split[1][:20]
    torch.manual_seed(TINY.seed)  # the same initial head the training started from
    untrained = gold_ordering_accuracy(load_cross_encoder("all-MiniLM-L6-v2", "cpu", TINY.max_length), held_out)
    after = gold_ordering_accuracy(load_cross_encoder(str(trained), "cpu", TINY.max_length), held_out)
    assert after > untrained + 0.1, (untrained, after)


def pool(query_id: str, question: str, texts: list[str]) -> Query:
    passages = [Passage(f"{query_id}/{i}", f"{query_id}/{i}", t) for i, t in enumerate(texts)]
    store = MemoryStore(passages)
    return Query(query_id, question, ranking=[Hit(p.id, 0.0, r, "given", store) for r, p in enumerate(passages, 1)])


@pytest.mark.slow
def test_the_stage_reranks_every_query_of_a_batch_in_one_model_call(trained, monkeypatch):
    stage = CrossEncoderRerank(str(trained), top_k=2, depth=3, first_stage_weight=0.0, device="cpu")  # the model alone
    stage.warm_up()
    calls = []
    predict = stage.encoder.predict
    monkeypatch.setattr(stage.encoder, "predict", lambda pairs, **kw: calls.append(len(pairs)) or predict(pairs, **kw))
    batch = [
        pool("a", "What is the capital of France?",
             ["Bananas are a yellow fruit.", "Tennis is played with rackets.", "Paris is the capital of France.",
              "Paris Hilton is a celebrity."]),
        pool("b", "Who wrote Hamlet?", ["Hamlet is a tragedy written by William Shakespeare.", "Cats sleep a lot."]),
    ]
    texts = {h.id: h.store.get([h.id])[h.id].indexed_text() for q in batch for h in q.ranking}
    results = Pipeline([stage]).run(batch)
    assert calls == [5]  # depth 3 of the first query, both of the second
    first, second = results
    # The kept order is the model's own order of the first three candidates.
    expected = score_pairs(stage.encoder, [(first.text, texts[f"a/{i}"]) for i in range(3)])
    best = sorted(range(3), key=lambda i: -expected[i])[:2]
    assert [h.id for h in first.ranking] == [f"a/{i}" for i in best]
    assert [h.score for h in first.ranking] == pytest.approx([expected[i] for i in best], abs=1e-4)
    assert first.trace[0].extra["ranks_before"] == [i + 1 for i in best]
    assert first.ranking[0].source == "cross_encoder" and [h.rank for h in first.ranking] == [1, 2]
    assert [p.id for p in first.passages] == [h.id for h in first.ranking]
    assert len(second.ranking) == 2 and second.ranking[0].score >= second.ranking[1].score


def test_a_heavy_first_stage_weight_keeps_the_first_stage_order_and_a_light_one_blends():
    from ragline.rerankers.cross_encoder import z_scores

    texts = ["Tennis is played with rackets.", "Paris is the capital of France.", "Bananas are yellow.",
             "France borders Spain."]
    query = pool("a", "What is the capital of France?", texts)
    for rank, hit in enumerate(query.ranking):
        hit.score = 10.0 - 3 * rank  # first stage: a/0 > a/1 > a/2 > a/3
    stage = CrossEncoderRerank("all-MiniLM-L6-v2", top_k=4, depth=4, first_stage_weight=1e6, device="cpu")
    kept = Pipeline([stage]).run([query])[0]
    assert [h.id for h in kept.ranking] == ["a/0", "a/1", "a/2", "a/3"]

    blend = CrossEncoderRerank("all-MiniLM-L6-v2", top_k=4, depth=4, first_stage_weight=0.5, device="cpu")
    query = pool("a", "What is the capital of France?", texts)
    for rank, hit in enumerate(query.ranking):
        hit.score = 10.0 - 3 * rank
    blended = Pipeline([blend]).run([query])[0]
    ce = z_scores(score_pairs(blend.encoder, [(query.text, t) for t in texts]))
    first = z_scores([10.0, 7.0, 4.0, 1.0])
    expected = sorted(range(4), key=lambda i: -(ce[i] + 0.5 * first[i]))
    assert [h.id for h in blended.ranking] == [f"a/{i}" for i in expected]
    with pytest.raises(ConfigError, match="first_stage_weight"):
        CrossEncoderRerank("m", first_stage_weight=-1)


def test_stage_settings_are_checked_and_round_trip(tmp_path):
    with pytest.raises(ConfigError):
        CrossEncoderRerank("m", top_k=0)
    stage = CrossEncoderRerank("some/model", top_k=5, depth=20, first_stage_weight=0.5)
    Pipeline([stage]).save(tmp_path / "p.yaml")
    assert Pipeline.load(tmp_path / "p.yaml").stages[0].to_config() == stage.to_config()


def test_training_needs_both_labels_and_writes_nothing_without_them(tmp_path):
    with pytest.raises(InputError, match="both relevant and non-relevant"):
        train_cross_encoder([Pair("q", "p", 1.0), Pair("q2", "p", 0.0)], "all-MiniLM-L6-v2", tmp_path / "m", TINY,
                            progress=False)
    with pytest.raises(InputError, match="both relevant and non-relevant"):
        train_cross_encoder([Pair("q", "p", 1.0)], "all-MiniLM-L6-v2", tmp_path / "m", TINY, progress=False)
    assert not (tmp_path / "m").exists()


def test_qrels_pairs_take_judged_positives_and_unjudged_bm25_negatives(vaswani, vaswani_bm25_index, vaswani_queries):
    from ragline.engine.data.topics import read_qrels

    qrels = read_qrels(vaswani / "qrels")
    topics = vaswani_queries[:5]
    pairs = pairs_from_qrels(qrels, topics, vaswani_bm25_index, negatives=4, depth=30)
    by_text = dict(topics)
    for qid, _ in topics:
        mine = [p for p in pairs if p.query == by_text[qid]]
        relevant = sum(1 for grade in qrels[qid].values() if grade > 0)
        assert sum(p.label == 1 for p in mine) == relevant
        assert sum(p.label == 0 for p in mine) == 4


@pytest.fixture(scope="module")
def hotpotqa_paragraph_index(hotpotqa_questions, tmp_path_factory):
    """BM25 over the paragraphs of 40 questions, as `ragline convert hotpotqa-corpus` writes them."""
    import json

    from ragline.engine.data.hotpotqa import paragraph_corpus
    from ragline.engine.index.build import build_index

    root = tmp_path_factory.mktemp("hotpotqa-paragraphs")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in paragraph_corpus(hotpotqa_questions[:40])))
    build_index(corpus, root / "idx", {"bm25": {}})
    return root / "idx"


def test_hotpotqa_hard_negatives_are_bm25_paragraphs_that_are_not_gold(hotpotqa_questions, hotpotqa_paragraph_index,
                                                                      vaswani_bm25_index):
    from ragline.engine.data.hotpotqa import gold_paragraph_qrels
    from ragline.rerankers.cross_encoder_training import hotpotqa_hard_negatives

    questions = hotpotqa_questions[:6]
    qrels = gold_paragraph_qrels(questions)
    pairs = hotpotqa_hard_negatives(questions, hotpotqa_paragraph_index, negatives=3, depth=30)
    for question in questions:
        mine = [p for p in pairs if p.query == question.question]
        if question.id not in qrels:
            assert not mine
            continue
        gold_titles = set(question.gold_titles)
        assert sum(p.label == 1 for p in mine) == len(qrels[question.id])
        negatives = [p for p in mine if p.label == 0]
        assert len(negatives) == 3 and not any(p.passage.split("\n")[0] in gold_titles for p in negatives)
    with pytest.raises(InputError, match="none of the questions' gold paragraphs is in this index"):
        hotpotqa_hard_negatives(questions, vaswani_bm25_index)


@pytest.mark.slow
def test_train_command_adds_hotpotqa_hard_negatives_from_an_index(hotpotqa_path, hotpotqa_paragraph_index, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ragline.cli", "train", "cross-encoder", "--data", str(hotpotqa_path),
         "--out", str(tmp_path / "m"), "--index", str(hotpotqa_paragraph_index), "--negatives", "2",
         "--limit", "2", "--max-length", "32", "--batch-size", "40", "--device", "cpu"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    # Two questions: ten paragraphs each and two BM25 negatives each (and their gold paragraphs
    # again where the index holds them): 20 pairs without --index.
    pairs = int(re.search(r"2 queries, (\d+) pairs", " ".join(result.stdout.split())).group(1))
    assert 24 <= pairs <= 28


@pytest.mark.slow
def test_train_command_writes_a_model_the_stage_loads(hotpotqa_path, tmp_path):
    out = tmp_path / "reranker"
    result = subprocess.run(
        [sys.executable, "-m", "ragline.cli", "train", "cross-encoder", "--data", str(hotpotqa_path),
         "--out", str(out), "--holdout", "0.3", "--limit", "4", "--max-length", "64", "--batch-size", "20",
         "--device", "cpu"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "4 queries, 40 pairs" in result.stdout and "2 steps" in result.stdout
    assert (out / "config.json").exists() and not list(tmp_path.glob(".*tmp*"))
    stage = CrossEncoderRerank(str(out), top_k=1, depth=2, device="cpu")
    ranked = Pipeline([stage]).run([pool("q", "Who wrote Hamlet?", ["Cats sleep.", "Shakespeare wrote Hamlet."])])
    assert len(ranked[0].ranking) == 1


def test_train_command_rejects_half_of_the_qrels_options(tmp_path):
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("q1\t0\td1\t1\n")
    result = subprocess.run(
        [sys.executable, "-m", "ragline.cli", "train", "cross-encoder", "--data", str(qrels),
         "--out", str(tmp_path / "m"), "--topics", str(qrels)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--topics and --index" in result.stdout + result.stderr
    assert not (tmp_path / "m").exists()


def test_ask_builds_retrieve_rerank_generate(vaswani_bm25_index):
    from ragline.cli.ask import ask_pipeline

    pipeline = ask_pipeline(str(vaswani_bm25_index), retriever="bm25", reranker="some/reranker", depth=30,
                            passages=3)
    assert [s.name for s in pipeline.stages] == ["bm25", "cross_encoder", "generate"]
    assert pipeline.stages[0].k == 30
    assert (pipeline.stages[1].top_k, pipeline.stages[1].depth) == (3, 30)
    assert pipeline.stages[2].passages == 3
    assert [s.name for s in ask_pipeline(str(vaswani_bm25_index), retriever="bm25").stages] == ["bm25", "generate"]
