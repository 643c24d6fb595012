"""The RAG prompt and the citations read back from answers."""

from ragline.engine.lm.prompts import PromptBuilder, cited_passages, strip_citations
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


def test_a_context_with_every_sentence_kept_is_the_passages_context():
    from ragline.compressors.sentences import render_context, sentence_units

    units = sentence_units(PASSAGES)
    assert render_context(PASSAGES, units, range(len(units))) == PromptBuilder().context(PASSAGES)


def test_generator_and_prompt_spans_feed_the_same_ids_without_a_chat_template(tiny_lm, tmp_path):
    """A base model without a template gets the turns as plain text; the
    generator and the attention stages must build exactly the same prompt."""
    from transformers import AutoTokenizer

    from ragline.engine.lm.prompt_spans import passage_spans
    from ragline.generators.hf_backend import HFGenerator

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    tokenizer.chat_template = None
    generator = HFGenerator(tiny_lm, device="cpu", dtype="float32")
    generator.warm_up()
    generator.tokenizer = tokenizer
    builder = PromptBuilder()
    ids, spans = passage_spans(tokenizer, builder, "Which capital?", PASSAGES)
    assert generator.prompt_ids(builder.messages("Which capital?", PASSAGES)) == ids
    assert tokenizer.decode(ids).rstrip().endswith("Answer:")
    assert len(spans) == len(PASSAGES)


def test_hotpotqa_paragraphs_become_passages_one_way():
    from ragline.engine.data.hotpotqa import Paragraph, paragraph_passage

    passage = paragraph_passage("q7", 2, Paragraph("Title", ("One. ", "Two.")))
    assert (passage.id, passage.doc_id, passage.title, passage.text) == ("q7/2", "Title", "Title", "One. Two.")
    assert (passage.start, passage.end) == (0, len("One. Two."))
