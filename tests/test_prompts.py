"""The RAG prompt and the citations read back from answers."""

from ragline.engine.prompts import PromptBuilder, cited_passages, strip_citations
from ragline.engine.types import Passage

PASSAGES = [
    Passage("p1", "d1", "Paris is the capital of France.", "Paris"),
    Passage("p2", "d2", "Berlin is the capital   of\nGermany.", "Berlin"),
    Passage("p3", "d3", "An untitled passage."),
]


def test_passages_are_numbered_with_titles_and_the_question_follows():
    system, user = PromptBuilder().messages("What is the capital of France? ", PASSAGES)
    assert system["role"] == "system" and "[1]" in system["content"]
    body = user["content"]
    assert body.index("[1] Paris\nParis is") < body.index("[2] Berlin\nBerlin is the capital of Germany.") < body.index("[3]\nAn untitled")
    assert "Question: What is the capital of France?\n" in body


def test_plain_mode_asks_for_the_bare_answer_and_a_context_replaces_the_passages():
    system, user = PromptBuilder(cite=False).messages("q?", PASSAGES, context="compressed evidence")
    assert "[1]" not in system["content"]
    assert "compressed evidence" in user["content"] and "Paris is" not in user["content"]
    assert PromptBuilder(system_prompt="Be terse.").messages("q?")[0]["content"] == "Be terse."


def test_overlong_passages_are_cut_at_a_word():
    context = PromptBuilder(max_passage_chars=12).context(PASSAGES[:1])
    assert context == "[1] Paris\nParis is the ..."


def test_cited_numbers_map_to_passage_ids_in_first_cited_order():
    answer = "Paris [1], as [3, 1] say; [2][7] and [0] are ignored or out of range."
    assert cited_passages(answer, PASSAGES) == ["p1", "p3", "p2"]
    assert cited_passages("no citations", PASSAGES) == []
    assert strip_citations("Paris [1, 2].") == "Paris ."
