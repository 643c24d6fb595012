import gzip
import json
import types

import pytest

from ragline.engine.data.corpus import detect_format, read_corpus
from ragline.engine.errors import InputError


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_accepts_id_or__id_and_optional_title(tmp_path):
    path = write(tmp_path / "c.jsonl", '{"id": "a", "text": "alpha"}\n\n{"_id": 7, "title": "T", "text": "beta"}\n')
    docs = list(read_corpus(path))
    assert [(d.id, d.title, d.text) for d in docs] == [("a", "", "alpha"), ("7", "T", "beta")]
    assert docs[1].origin.endswith("c.jsonl:3")


def test_beir_folder_and_its_corpus_file_read_the_same(tmp_path):
    lines = [{"_id": "d1", "title": "One", "text": "first"}, {"_id": "d2", "title": "", "text": "second"}]
    corpus = write(tmp_path / "beir" / "corpus.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    assert detect_format(tmp_path / "beir") == "beir"
    from_folder = [(d.id, d.title, d.text) for d in read_corpus(tmp_path / "beir")]
    from_file = [(d.id, d.title, d.text) for d in read_corpus(corpus)]
    assert from_folder == from_file == [("d1", "One", "first"), ("d2", "", "second")]


def test_gzipped_jsonl(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write('{"id": "z", "text": "zipped"}\n')
    assert [d.id for d in read_corpus(path)] == ["z"]


def test_readers_stream(tmp_path):
    path = write(tmp_path / "c.jsonl", '{"id": "a", "text": "x"}\n')
    assert isinstance(read_corpus(path), types.GeneratorType)


@pytest.mark.parametrize(
    "content, line, message",
    [
        ('{"id": "a", "text": "x"}\n{"id": "b", "text": \n', 2, "malformed JSON"),
        ('{"id": "a", "text": "x"}\n[1, 2]\n', 2, "expected a JSON object"),
        ('{"text": "no id"}\n', 1, "no 'id'"),
        ('{"id": "a"}\n', 1, "no string 'text'"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, content, line, message):
    path = write(tmp_path / "bad.jsonl", content)
    with pytest.raises(InputError) as info:
        list(read_corpus(path))
    assert info.value.line == line and info.value.path == str(path)
    assert f"bad.jsonl:{line}:" in str(info.value) and message in str(info.value)
    assert info.value.exit_code == 2


def test_trec_documents_with_title_and_tags(tmp_path):
    path = write(
        tmp_path / "docs.trec",
        "<DOC>\n<DOCNO> D1 </DOCNO>\n<TITLE>A title</TITLE>\n<TEXT>\nsome  text\nhere\n</TEXT>\n</DOC>\n"
        "<DOC>\n<DOCNO>D2</DOCNO>\nplain body\n</DOC>\n",
    )
    assert detect_format(path) == "trec"
    docs = list(read_corpus(path))
    assert [(d.id, d.title, d.text) for d in docs] == [("D1", "A title", "some text here"), ("D2", "", "plain body")]


@pytest.mark.parametrize(
    "content, line, message",
    [
        ("<DOC>\n<DOCNO>1</DOCNO>\ntext\n<DOC>\n", 4, "not closed before this one"),
        ("<DOC>\n<DOCNO>1</DOCNO>\ntext\n", 1, "not closed before the end"),
        ("<DOC>\ntext only\n</DOC>\n", 1, "no <DOCNO>"),
        ("</DOC>\n", 1, "without an opening"),
        ("<DOC>\n<DOCNO>1</DOCNO>\n</DOC>\nstray\n", 4, "outside"),
    ],
)
def test_malformed_trec_names_file_and_line(tmp_path, content, line, message):
    path = write(tmp_path / "bad.trec", content)
    with pytest.raises(InputError) as info:
        list(read_corpus(path, "trec"))
    assert info.value.line == line and message in str(info.value)


def test_text_folder_uses_relative_path_and_heading(tmp_path):
    write(tmp_path / "d" / "a.md", "# Alpha doc\nbody a\n")
    write(tmp_path / "d" / "sub" / "b.txt", "body b\n")
    write(tmp_path / "d" / "ignored.bin", "x")
    docs = list(read_corpus(tmp_path / "d"))
    assert [(d.id, d.title) for d in docs] == [("a.md", "Alpha doc"), ("sub/b.txt", "b")]


def test_vaswani_reads_all_documents(vaswani):
    docs = read_corpus(vaswani / "doc-text.trec")
    first = next(docs)
    assert first.id == "1" and first.text.startswith("compact memories have flexible capacities")
    assert 1 + sum(1 for _ in docs) == 11429


def test_unknown_format_and_missing_corpus(tmp_path):
    with pytest.raises(InputError, match="unknown corpus format"):
        read_corpus(write(tmp_path / "c.jsonl", ""), "xml")
    with pytest.raises(InputError, match="not found"):
        read_corpus(tmp_path / "absent")
    with pytest.raises(InputError, match="cannot tell"):
        read_corpus(write(tmp_path / "c.csv", "a,b\n"))
