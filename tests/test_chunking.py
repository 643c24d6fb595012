import pytest

from ragline.engine.data.chunking import chunk_document, passages_of
from ragline.engine.errors import ConfigError
from ragline.engine.types import Document


def test_short_document_is_one_passage_with_its_own_id():
    doc = Document("d", "one two three", "T")
    assert chunk_document(doc, window=5) == chunk_document(doc, window=None)
    (p,) = chunk_document(doc, window=5)
    assert (p.id, p.doc_id, p.title, p.start, p.end) == ("d", "d", "T", 0, len(doc.text))


def test_windows_overlap_and_keep_offsets():
    text = " ".join(f"w{i}" for i in range(10))
    passages = chunk_document(Document("d", text), window=4, overlap=1)
    assert [p.id for p in passages] == ["d#0", "d#1", "d#2"]
    assert [p.text.split() for p in passages] == [
        ["w0", "w1", "w2", "w3"], ["w3", "w4", "w5", "w6"], ["w6", "w7", "w8", "w9"],
    ]
    for p in passages:
        assert text[p.start : p.end] == p.text and p.doc_id == "d"


def test_every_word_is_covered():
    text = " ".join(str(i) for i in range(23))
    passages = chunk_document(Document("d", text), window=5, overlap=2)
    covered = {w for p in passages for w in p.text.split()}
    assert covered == set(text.split())


def test_bad_window_is_rejected():
    with pytest.raises(ConfigError):
        list(passages_of([Document("d", "x")], window=3, overlap=3))
