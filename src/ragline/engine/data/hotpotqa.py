"""HotpotQA records (the official fields), read with line-numbered errors."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ragline.engine.data.corpus import json_objects, record_id
from ragline.engine.errors import ConfigError, InputError
from ragline.engine.types import Passage


@dataclass(frozen=True)
class Paragraph:
    title: str
    sentences: tuple[str, ...]

    @property
    def text(self) -> str:
        return "".join(self.sentences).strip()


@dataclass(frozen=True)
class HotpotQuestion:
    id: str
    question: str
    answer: str
    type: str
    paragraphs: tuple[Paragraph, ...]
    supporting: tuple[tuple[str, int], ...]  # (title, sentence index)

    @property
    def gold_titles(self) -> list[str]:
        return list(dict.fromkeys(title for title, _ in self.supporting))

    @property
    def evidence_complete(self) -> bool:
        """Whether every supporting fact is in the context. Not always so: in the
        496-question sample shipped for this project only 149 are complete, and
        78 have no gold paragraph in their context at all."""
        by_title = {p.title: p for p in self.paragraphs}
        return all(t in by_title and 0 <= i < len(by_title[t].sentences) for t, i in self.supporting)

    def supporting_sentences(self) -> list[str]:
        """The labelled evidence sentences that exist in the context."""
        by_title = {p.title: p for p in self.paragraphs}
        found = []
        for title, index in self.supporting:
            paragraph = by_title.get(title)
            if paragraph is not None and 0 <= index < len(paragraph.sentences):
                found.append(paragraph.sentences[index].strip())
        return found


def paragraph_passage(question_id: str, index: int, paragraph: Paragraph, text: str | None = None) -> Passage:
    """A paragraph as the passage every HotpotQA evaluation uses: id
    ``question_id/index``, the paragraph title as title and document id, and
    its text (or ``text``, a cleaned form of it)."""
    text = paragraph.text if text is None else text
    return Passage(f"{question_id}/{index}", paragraph.title, text, paragraph.title, 0, len(text))


def read_hotpotqa(path: str | Path, limit: int | None = None, encoding_errors: str = "strict") -> list[HotpotQuestion]:
    """The questions of a HotpotQA JSONL file (at most ``limit``), each record
    checked field by field so that a malformed one is an ``InputError`` at its line.
    ``encoding_errors``: ``"strict"`` (the default) makes a byte that is not
    UTF-8 an ``InputError`` naming file, line and column; ``"replace"`` reads
    such bytes as U+FFFD and logs a warning."""
    path = Path(path)
    if not path.is_file():
        raise InputError("HotpotQA file not found", path=path)
    questions = []
    for lineno, record in json_objects(path, encoding_errors):
        questions.append(_question(record, path, lineno))
        if limit and len(questions) >= limit:
            break
    if not questions:
        raise InputError("no questions found", path=path)
    return questions


def _question(record: dict, path: Path, lineno: int) -> HotpotQuestion:
    """The record as a question; a field of the wrong type is an error rather
    than turned into a string (``str`` makes an id of ``null``, a sentence of a list)."""
    context, facts = record.get("context"), record.get("supporting_facts")
    if not _list_of_pairs(context, lambda sentences: _list_of(sentences, str)):
        raise InputError("not a HotpotQA record: 'context' must be a list of [title, [sentence, ...]]", path, lineno)
    if not _list_of_pairs(facts, lambda index: isinstance(index, int) and not isinstance(index, bool)):
        raise InputError("not a HotpotQA record: 'supporting_facts' must be a list of [title, sentence index]", path, lineno)
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise InputError("not a HotpotQA record: 'question' must be a non-empty string", path, lineno)
    answer, kind = (_optional_string(record, key, path, lineno) for key in ("answer", "type"))
    paragraphs = tuple(Paragraph(title, tuple(sentences)) for title, sentences in context)
    supporting = tuple((title, index) for title, index in facts)
    question_id = record_id(record, ("_id",), path, lineno)
    return HotpotQuestion(question_id, question, answer, kind, paragraphs, supporting)


def _optional_string(record: dict, key: str, path: Path, lineno: int) -> str:
    """A string field the test split leaves out: ``""`` when absent or null."""
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise InputError(f"not a HotpotQA record: {key!r} must be a string", path, lineno)
    return value or ""


def _list_of(value: object, kind: type) -> bool:
    return isinstance(value, list) and all(isinstance(item, kind) for item in value)


def _list_of_pairs(value: object, second: Callable[[object], bool]) -> bool:
    """Whether ``value`` is a list of ``[string, x]`` with ``second(x)`` true."""
    return _list_of(value, list) and all(
        len(pair) == 2 and isinstance(pair[0], str) and second(pair[1]) for pair in value
    )


def split_by_question(questions: Sequence[HotpotQuestion], test_fraction: float = 0.3,
                      seed: int = 0) -> tuple[list[HotpotQuestion], list[HotpotQuestion]]:
    """(train, test): each question falls on one side by a hash of its id, so
    the split is the same on every machine and never depends on file order."""
    if not 0 < test_fraction < 1:
        raise ConfigError("test_fraction must be in (0, 1)")
    train, test = [], []
    for question in questions:
        digest = hashlib.sha1(f"{seed}:{question.id}".encode()).digest()
        side = test if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else train
        side.append(question)
    return train, test


def paragraph_id(title: str) -> str:
    """A paragraph's id in the open corpus: its title without spaces, as in
    Wikipedia URLs, so TREC run files stay well formed."""
    return title.replace(" ", "_")


def gold_paragraph_qrels(questions: Sequence[HotpotQuestion]) -> dict[str, dict[str, int]]:
    """Relevance judgements over ``paragraph_corpus`` ids: each question's gold
    paragraphs that exist in its context; questions with none are left out."""
    qrels = {}
    for question in questions:
        present = {p.title for p in question.paragraphs}
        gold = {paragraph_id(title): 1 for title in question.gold_titles if title in present}
        if gold:
            qrels[question.id] = gold
    return qrels


def paragraph_corpus(questions: Sequence[HotpotQuestion]) -> list[dict]:
    """Every distinct paragraph (by title) as a corpus record: the open setting,
    where each question must find its gold paragraphs among all of them."""
    paragraphs = {p.title: p for q in questions for p in q.paragraphs}
    return [{"id": paragraph_id(title), "title": title, "text": p.text} for title, p in paragraphs.items()]
