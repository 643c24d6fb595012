import gzip
import json
import logging
import time
import types

import pytest

from ragline.engine.data.corpus import detect_format, read_corpus
from ragline.engine.data.hotpotqa import read_hotpotqa
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
        ('{"text": "no id"}\n', 1, "no '_id' or 'id'"),
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
        ("<DOC>\n<DOCNO>1</DOCNO>\ntext\n<DOC>\n", 1, "not closed before the next <DOC> at line 4"),
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


def write_bytes(path, data: bytes):
    """``data`` at ``path``, gzip-compressed when the name ends in .gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


HOTPOT_RECORD = {
    "_id": "q1", "question": "Who?", "answer": "Ann", "type": "bridge",
    "supporting_facts": [["Ann", 0]], "context": [["Ann", ["Ann was here.", " She left."]]],
}
HOTPOT_LINE = json.dumps(HOTPOT_RECORD).encode()

# (file, content, line, bad byte, its column): the column counts characters,
# so the two-byte "é" before the bad byte counts once.
NOT_UTF8 = [
    ("c.jsonl", b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xc3\xa9 \xff"}\n', 2, 0xFF, 27),
    ("c.jsonl.gz", b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xc3\xa9 \xff"}\n', 2, 0xFF, 27),
    ("docs.trec", b"<DOC>\n<DOCNO>1</DOCNO>\nna\xefve\n</DOC>\n", 3, 0xEF, 3),
    ("docs.trec.gz", b"<DOC>\n<DOCNO>1</DOCNO>\nna\xefve\n</DOC>\n", 3, 0xEF, 3),
    ("docs", b"<DOC>\x80\n<DOCNO>1</DOCNO>\n</DOC>\n", 1, 0x80, 6),  # found while sniffing the format
    ("beir/corpus.jsonl", b'{"_id": "a", "text": "\xfe"}\n', 1, 0xFE, 23),
    ("folder/a.txt", b"fine\nbad \x80 here\n", 2, 0x80, 5),
]


@pytest.mark.parametrize("name, content, line, byte, column", NOT_UTF8)
def test_bytes_that_are_not_utf8_name_file_line_and_column(tmp_path, name, content, line, byte, column):
    file = write_bytes(tmp_path / name, content)
    with pytest.raises(InputError) as info:
        list(read_corpus(tmp_path / name.split("/")[0]))
    assert str(info.value) == f"{file}:{line}: not valid UTF-8 (byte 0x{byte:02x} at column {column})"
    assert info.value.exit_code == 2


@pytest.mark.parametrize("name, content, line, byte, column", NOT_UTF8)
def test_encoding_errors_replace_reads_bad_bytes_as_replacement_characters(
    tmp_path, caplog, name, content, line, byte, column
):
    file = write_bytes(tmp_path / name, content)
    with caplog.at_level(logging.WARNING):
        docs = list(read_corpus(tmp_path / name.split("/")[0], encoding_errors="replace"))
    assert any("\ufffd" in d.id + d.title + d.text for d in docs)
    assert f"{file}:{line}: not valid UTF-8" in caplog.text


def test_hotpotqa_bytes_that_are_not_utf8(tmp_path):
    file = write_bytes(tmp_path / "h.jsonl", HOTPOT_LINE + b"\n" + HOTPOT_LINE.replace(b"Who", b"Wh\xf0o") + b"\n")
    with pytest.raises(InputError, match=r"h\.jsonl:2: not valid UTF-8 \(byte 0xf0 at column 30\)"):
        read_hotpotqa(file)


def test_detect_format_reports_bad_bytes_not_an_unknown_format(tmp_path):
    path = write_bytes(tmp_path / "docs", b"<DOC>\xff\n<DOCNO>1</DOCNO>\n</DOC>\n")
    with pytest.raises(InputError, match=r"docs:1: not valid UTF-8 \(byte 0xff at column 6\)"):
        detect_format(path)
    assert detect_format(path, encoding_errors="replace") == "trec"
    utf16 = write_bytes(tmp_path / "utf16", "<DOC>".encode("utf-16"))
    with pytest.raises(InputError, match=r"utf16:1: not valid UTF-8 \(byte 0xff at column 1\)"):
        detect_format(utf16)
    with pytest.raises(InputError, match="encoding_errors"):
        read_corpus(path, encoding_errors="ignore")


def test_truncated_gzip_says_where_it_ends(tmp_path):
    lines = "".join(json.dumps({"id": str(i), "text": f"document number {i} " * 5}) + "\n" for i in range(2000))
    data = gzip.compress(lines.encode())
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        list(read_corpus(path))
    assert "gzip file ends early" in str(info.value) and info.value.exit_code == 2
    assert info.value.line > 1 and str(info.value).startswith(f"{path}:{info.value.line}: ")


def test_a_gz_file_that_is_not_gzip(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(b'{"id": "a", "text": "plain"}\n')
    with pytest.raises(InputError, match=r"c\.jsonl\.gz:1: not a valid gzip file"):
        list(read_corpus(path))


def test_trec_records_on_one_line(tmp_path):
    path = write(
        tmp_path / "docs.trec",
        "<DOC><DOCNO>a</DOCNO> x </DOC>\n"
        "<DOC><DOCNO>b</DOCNO>y</DOC> <doc><docno>c</docno> z <title>T</title></doc>\n"
        "<DOC>\n<DOCNO>d</DOCNO>\nw</DOC>\n",
    )
    docs = list(read_corpus(path))
    assert [(d.id, d.title, d.text) for d in docs] == [("a", "", "x"), ("b", "", "y"), ("c", "T", "z"), ("d", "", "w")]
    assert [d.origin.rsplit(":", 1)[1] for d in docs] == ["1", "2", "2", "3"]
    assert detect_format(path) == "trec"


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"id": "a", "text": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),  # was RecursionError
        ('{"id": ' + "1" * 5000 + ', "text": "x"}', "a number with too many digits"),  # was ValueError
        ('{"id": {"a": 1}, "text": "x"}', "must be a non-blank string or an integer"),  # was id "{'a': 1}"
        ('{"id": true, "text": "x"}', "must be a non-blank string or an integer"),
        ('{"id": " ", "text": "x"}', "must be a non-blank string or an integer"),
        ('{"id": "a", "text": "\\ud800 alone"}', "half a surrogate pair"),  # was read, then failed on writing
    ],
)
def test_json_that_python_reads_but_is_no_record(tmp_path, line, message):
    path = write(tmp_path / "c.jsonl", '{"id": "ok", "text": "\\ud83d\\ude00 a pair is fine"}\n' + line + "\n")
    with pytest.raises(InputError, match=rf"c\.jsonl:2: .*{message}"):
        list(read_corpus(path))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"supporting_facts": [["Ann", float("inf")]]}, "'supporting_facts' must be"),  # was OverflowError
        ({"supporting_facts": [["Ann", 0.5]]}, "'supporting_facts' must be"),  # was read as 0
        ({"supporting_facts": [["Ann", True]]}, "'supporting_facts' must be"),
        ({"context": {"ab": "c"}}, "'context' must be"),  # was a paragraph "a" with sentence "b"
        ({"context": [["Ann", "one string"]]}, "'context' must be"),  # was one sentence per character
        ({"context": [["Ann", [["nested"]]]]}, "'context' must be"),
        ({"_id": None}, "no '_id'"),  # was id "None"
        ({"question": 3}, "'question' must be"),
        ({"answer": ["Ann"]}, "'answer' must be a string"),
        ({"answer": 0}, "'answer' must be a string"),
    ],
)
def test_hotpotqa_fields_of_the_wrong_type(tmp_path, change, message):
    path = write(tmp_path / "h.jsonl", json.dumps(HOTPOT_RECORD) + "\n" + json.dumps({**HOTPOT_RECORD, **change}) + "\n")
    with pytest.raises(InputError, match=rf"h\.jsonl:2: .*{message}"):
        read_hotpotqa(path)


def test_hotpotqa_without_answer_or_type_reads(tmp_path):
    record = {key: value for key, value in HOTPOT_RECORD.items() if key not in ("answer", "type")}
    (question,) = read_hotpotqa(write(tmp_path / "h.jsonl", json.dumps({**record, "type": None}) + "\n"))
    assert (question.answer, question.type, question.supporting) == ("", "", (("Ann", 0),))


def test_unclosed_trec_tags_before_long_runs_of_spaces_are_read_fast(tmp_path):
    # The old <DOCNO> pattern took 30 s on 5,000 spaces (and grew with the cube).
    path = write(tmp_path / "docs.trec", "<DOC><DOCNO>" + " " * 50_000 + "x\n</DOC>\n")
    started = time.perf_counter()
    with pytest.raises(InputError, match="docs.trec:1: <DOC> record has no <DOCNO>"):
        list(read_corpus(path))
    path.write_text("<DOC><DOCNO>2</DOCNO>" + "<a " * 50_000 + "\n</DOC>\n")
    assert [d.id for d in read_corpus(path)] == ["2"]
    assert time.perf_counter() - started < 2


def test_line_numbers_count_newlines_only(tmp_path):
    # A lone carriage return is no line break (not for wc -l, grep -n or editors);
    # Python's text mode took it for one and named the wrong line.
    path = write_bytes(tmp_path / "c.jsonl", b'{"id": "a", "text": "x"}\r\n\r\n\r{"id": "b"}\n')
    with pytest.raises(InputError, match=r"c\.jsonl:3: record has no string 'text'"):
        list(read_corpus(path))


def test_byte_order_mark_is_not_part_of_the_first_line(tmp_path):
    path = write_bytes(tmp_path / "docs", "\ufeff<DOC><DOCNO>a</DOCNO> x </DOC>\n".encode())
    assert [(d.id, d.text) for d in read_corpus(path)] == [("a", "x")]
