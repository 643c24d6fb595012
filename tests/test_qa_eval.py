import pytest

from ragline.engine.errors import ConfigError
from ragline.engine.pipeline import Pipeline
from ragline.engine.registry import STAGES, register_stage, unregister
from ragline.engine.stage import Stage
from ragline.engine.types import Answer
from ragline.eval.qa import count_tokens, evaluate_qa, exact_match, f1_score, normalize_answer
from ragline.retrievers.bm25 import BM25


@pytest.fixture(scope="module")
def all_questions(hotpotqa_questions):
    return hotpotqa_questions


@pytest.fixture(scope="module")
def questions(all_questions):
    """Twenty questions whose supporting facts are all in their context."""
    return [q for q in all_questions if q.evidence_complete][:20]


def test_squad_normalisation_em_and_f1():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert exact_match("the eiffel tower", "Eiffel Tower") == 1.0
    assert f1_score("eiffel tower in paris", "Eiffel Tower") == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert f1_score("yes", "no") == 0.0 and f1_score("no", "no") == 1.0
    assert f1_score("", "anything") == 0.0


def test_count_tokens_counts_words_and_punctuation():
    assert count_tokens("Hello, world!") == 4


def test_hotpotqa_reader_and_evidence_completeness(all_questions):
    assert len(all_questions) == 496
    first = all_questions[0]
    assert len(first.paragraphs) == 10 and first.answer == "Drifting"
    # This sample's first question lacks both gold paragraphs in its context.
    assert first.gold_titles == ["D1NZ", "Drifting (motorsport)"] and first.supporting_sentences() == []
    assert sum(q.evidence_complete for q in all_questions) == 149


def test_complete_only_filters(all_questions):
    rows, summary = evaluate_qa(all_questions[:40], None, complete_only=True)
    assert summary["questions"] == summary["questions_with_complete_evidence"] == sum(q.evidence_complete for q in all_questions[:40])


def test_raw_distractor_context_keeps_all_evidence(questions):
    rows, summary = evaluate_qa(questions, None)
    assert summary["questions"] == 20
    assert summary["support_recall"] == 1.0 and summary["gold_paragraph_recall"] == 1.0
    assert summary["em"] is None and summary["compression_ratio"] == 1.0
    assert all(r["tokens_before"] > 100 for r in rows)
    # No generate stage: nothing scores the gold answer.
    assert summary["answer_nll"] is None and all(r["answer_nll"] is None for r in rows)
    intervals = summary["intervals"]
    assert intervals["support_recall"] == [1.0, 1.0] and intervals["em"] is None and intervals["answer_nll"] is None
    low, high = intervals["tokens_before"]
    assert low < summary["tokens_before"] < high


class KeepFirstSentence(Stage):
    """A stand-in compressor: keeps the first sentence of the first passage."""

    def run(self, batch):
        for q in batch:
            q.context = q.passages[0].text.split(". ")[0] if q.passages else ""
        return batch


class Oracle(Stage):
    """A stand-in generator that answers every other question correctly."""

    def __init__(self, answers: dict):
        self.answers = answers

    def run(self, batch):
        for i, q in enumerate(batch):
            q.answer = Answer(self.answers[q.id] if i % 2 == 0 else "wrong")
        return batch


@pytest.fixture(autouse=True)
def stand_in_stages():
    """The stand-ins are known by name only while a test here runs."""
    register_stage("test_first_sentence")(KeepFirstSentence)
    register_stage("test_oracle")(Oracle)
    yield
    unregister(STAGES, "test_first_sentence")
    unregister(STAGES, "test_oracle")


def test_stages_plug_in_compression_and_answers(questions):
    from ragline.engine.index.docstore import fetch_passages

    class FillPassages(Stage):
        name = "fill"

        def run(self, batch):
            for q in batch:
                q.passages = fetch_passages(q.ranking)
            return batch

    pipe = Pipeline([FillPassages(), KeepFirstSentence(), Oracle({q.id: q.answer for q in questions})], batch_size=8)
    rows, summary = evaluate_qa(questions, pipe)
    assert summary["em"] == pytest.approx(0.5) and summary["f1"] >= 0.5
    assert summary["compression_ratio"] > 5
    assert summary["support_recall"] < 0.6
    assert set(summary["stage_seconds"]) == {"fill", "test_first_sentence", "test_oracle"}
    low, high = summary["intervals"]["em"]
    assert 0 < low < 0.5 < high < 1
    assert set(summary["intervals"]["stage_seconds"]) == set(summary["stage_seconds"])
    assert summary["answer_nll"] is None  # a stage that answers but is not "generate" cannot score


def test_settings_are_checked(questions, vaswani_bm25_index):
    with pytest.raises(ConfigError, match="open setting needs"):
        evaluate_qa(questions, None, "open")
    with pytest.raises(ConfigError, match="must not retrieve"):
        evaluate_qa(questions, Pipeline([BM25(str(vaswani_bm25_index))]))
    with pytest.raises(ConfigError, match="unknown QA setting"):
        evaluate_qa(questions, None, "closed")


def test_open_setting_retrieves_from_a_shared_index(questions, tmp_path):
    import json

    from ragline.engine.index.build import build_index

    paragraphs = {p.title: p.text for q in questions for p in q.paragraphs}
    corpus = tmp_path / "paragraphs.jsonl"
    corpus.write_text("".join(json.dumps({"id": t.replace(" ", "_"), "title": t, "text": x}) + "\n" for t, x in paragraphs.items()))
    build_index(corpus, tmp_path / "idx", {"bm25": {}})
    rows, summary = evaluate_qa(questions, Pipeline([BM25(str(tmp_path / "idx"), k=5)], top_k=5), "open")
    assert summary["questions"] == 20
    # BM25 over 200 paragraphs finds some but not all gold paragraphs in its top 5.
    assert 0.3 < summary["gold_paragraph_recall"] < 1.0
    assert all(len(r["stage_seconds"]) == 1 for r in rows)


def test_bootstrap_interval_holds_the_mean_and_narrows_with_more_questions():
    import numpy as np

    from ragline.eval.intervals import bootstrap_interval

    values = np.random.default_rng(1).normal(2.0, 1.0, size=400)
    few, many = bootstrap_interval(values[:25]), bootstrap_interval(values)
    assert few[0] < values[:25].mean() < few[1] and many[0] < values.mean() < many[1]
    assert many[1] - many[0] < 0.5 * (few[1] - few[0])  # width ~ 1/sqrt(n): 16x the data, ~1/4 the width
    assert bootstrap_interval(values) == many  # seeded: the same report twice
    assert bootstrap_interval([3.0]) == (3.0, 3.0) and bootstrap_interval([]) is None


def test_sign_test_against_known_values():
    from ragline.eval.intervals import sign_test

    assert sign_test([1.0] * 9 + [-1.0]) == pytest.approx(0.021484375)  # 2 * (1 + 10) / 2**10
    assert sign_test([0.0] * 7) == 1.0
    assert sign_test([0.5] * 9 + [-2.0] + [0.0] * 5) == pytest.approx(0.021484375)  # ties dropped
    assert sign_test([-1.0] * 6) == pytest.approx(2 / 64)
    assert sign_test([1.0, -1.0] * 5) == 1.0
    assert 0 < sign_test([1.0] * 3000 + [-1.0] * 2000) < 1e-40  # exact for thousands of questions


def test_paired_comparison_counts_wins_by_the_metric_direction():
    from ragline.eval.intervals import paired_comparison

    lower = paired_comparison([3.0, 2.0, 1.0], [2.0, 2.0, 1.5], higher_is_better=False)
    assert lower["difference"] == pytest.approx(-1 / 6)
    assert (lower["wins"], lower["ties"], lower["losses"]) == (1, 1, 1)
    low, high = lower["interval"]
    assert -1.0 <= low <= lower["difference"] <= high <= 0.5


def qa_run(folder, rows, setting="distractor"):
    """An ``eval qa --out`` folder written by hand, as eval qa writes it."""
    import json

    folder.mkdir()
    base = {"type": "bridge", "evidence_complete": True, "answer": "x", "prediction": "y", "gold_paragraph_recall": 1.0}
    (folder / "per_question.jsonl").write_text("".join(json.dumps({**base, **row}) + "\n" for row in rows))
    (folder / "summary.json").write_text(json.dumps({"questions": len(rows), "setting": setting}))
    return folder


def row(qid, f1, nll, generate_seconds, ttft=None):
    values = {"id": qid, "f1": f1, "answer_nll": nll, "stage_seconds": {"generate": generate_seconds}}
    return {**values, "ttft": ttft} if ttft is not None else values


def ragline(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "ragline.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture()
def two_runs(tmp_path):
    a = qa_run(tmp_path / "a", [row("q1", 0.0, 3.0, 1.0, ttft=0.5), row("q2", 0.5, 2.0, 1.0, ttft=0.5),
                                row("q3", 1.0, 1.0, 2.0), row("q4", 1.0, 1.0, 1.0)])
    b = qa_run(tmp_path / "b", [row("q1", 1.0, 2.0, 1.5, ttft=0.25), row("q2", 0.5, 1.5, 1.5, ttft=0.5),
                                row("q3", 1.0, 0.5, 2.5), row("q5", 0.0, 9.0, 9.0)])
    return a, b


def test_eval_compare_pairs_questions_by_id(two_runs):
    import json

    a, b = two_runs
    result = ragline("eval", "compare", a, b, "--json")
    assert result.returncode == 0, result.stderr
    comparison = json.loads(result.stdout)
    assert (comparison["paired"], comparison["only_a"], comparison["only_b"]) == (3, 1, 1)
    metrics = comparison["metrics"]
    assert list(metrics)[:2] == ["f1", "answer_nll"]
    f1 = metrics["f1"]
    assert (f1["better"], f1["n"], f1["wins"], f1["ties"], f1["losses"]) == ("higher", 3, 1, 2, 0)
    assert f1["mean_a"] == pytest.approx(0.5) and f1["mean_b"] == pytest.approx(5 / 6)
    assert f1["difference"] == pytest.approx(1 / 3) and f1["p"] == 1.0
    nll = metrics["answer_nll"]
    assert nll["better"] == "lower" and nll["difference"] == pytest.approx(-2 / 3)
    assert (nll["wins"], nll["losses"], nll["p"]) == (3, 0, pytest.approx(0.25))
    assert -1.0 <= nll["interval"][0] <= nll["interval"][1] <= -0.5
    seconds = metrics["stage_seconds.generate"]
    assert seconds["better"] == "lower" and (seconds["wins"], seconds["losses"]) == (0, 3)
    assert metrics["ttft"]["n"] == 2 and metrics["ttft"]["difference"] == pytest.approx(-0.125)
    assert metrics["gold_paragraph_recall"]["ties"] == 3 and "evidence_complete" not in metrics

    table = ragline("eval", "compare", a, b)
    assert table.returncode == 0, table.stderr
    assert "paired 3 questions by id; 1 only in A, 1 only in B" in table.stdout
    f1_line = next(line for line in table.stdout.splitlines() if "│ f1 " in line)
    assert "higher" in f1_line and "+0.3333" in f1_line and "1/2/0" in f1_line
    nll_line = next(line for line in table.stdout.splitlines() if "answer_nll" in line)
    assert "lower" in nll_line and "-0.6667" in nll_line and "3/0/0" in nll_line and "0.2500" in nll_line


def test_eval_compare_refuses_runs_it_cannot_pair(two_runs, tmp_path):
    a, _ = two_runs
    other = qa_run(tmp_path / "other", [row("z1", 1.0, 1.0, 1.0)])
    for args, message in [((a, other), "share no question ids"), ((a, tmp_path / "missing"), "no such run folder"),
                          ((a, tmp_path), "no per_question.jsonl")]:
        result = ragline("eval", "compare", *args)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_rows_and_summary_carry_the_kv_reuse_statistics(questions, smollm2_folder):
    from ragline.generators.generate import Generate

    pipe = Pipeline([Generate(model=smollm2_folder, passages=2, max_new_tokens=2, kv_reuse="block")])
    rows, summary = evaluate_qa(questions[:2], pipe)
    for row in rows:  # blocks: the two passages and the prompt's own pieces around them
        kv = row["kv"]
        assert kv["kv_reuse"] == "block" and kv["misses"] >= 2
        assert kv["cached_tokens"] > 50 and kv["prefilled_tokens"] > 5
    first_misses = [row["kv"]["misses"] for row in rows]
    assert summary["kv"]["questions_by_mode"] == {"block": 2} and summary["kv"]["misses"] == sum(first_misses)
    assert 0.5 < summary["kv"]["cached_share"] < 1

    again, summary = evaluate_qa(questions[:2], pipe)  # the same passages: every block from memory
    assert summary["kv"]["misses"] == 0 and summary["kv"]["layouts_reused"] == 2
    assert [row["kv"]["memory_hits"] for row in again] >= [1, 1]


def test_a_run_without_kv_reuse_has_no_kv_summary(questions):
    rows, summary = evaluate_qa(questions[:2], Pipeline([KeepFirstSentence()]))
    assert "kv" not in rows[0] and summary["kv"] is None
