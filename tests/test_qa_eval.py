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
