import gzip
import logging

import pytest

from ragline.engine.data.runfile import read_run, write_run
from ragline.engine.data.topics import read_qrels, read_topics
from ragline.engine.errors import InputError


def test_vaswani_topics_and_qrels(vaswani):
    topics = read_topics(vaswani / "query-text.trec")
    assert len(topics) == 93
    assert topics[0] == ("1", "MEASUREMENT OF DIELECTRIC CONSTANT OF LIQUIDS BY THE USE OF MICROWAVE TECHNIQUES")
    qrels = read_qrels(vaswani / "qrels")
    assert sum(len(d) for d in qrels.values()) == 2083
    assert qrels["1"]["1239"] == 1


def test_beir_and_tsv_topics(tmp_path):
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "first"}\n{"_id": "q2", "text": "second"}\n')
    assert read_topics(tmp_path / "queries.jsonl") == [("q1", "first"), ("q2", "second")]
    (tmp_path / "q.tsv").write_text("7\tseven up\n8\teight\n")
    assert read_topics(tmp_path / "q.tsv") == [("7", "seven up"), ("8", "eight")]


def test_beir_qrels_with_header(tmp_path):
    (tmp_path / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\n")
    assert read_qrels(tmp_path / "test.tsv") == {"q1": {"d1": 2, "d2": 0}}


@pytest.mark.parametrize(
    "name, content, line",
    [
        ("q.jsonl", '{"_id": "q1", "text": "ok"}\n{"_id": "q2"}\n', 2),
        ("q.jsonl", '{"_id": "q1", "text": "  "}\n', 1),
        ("q.tsv", "1\tfine\nno tab here\n", 2),
        ("q.trec", "<top>\n<num>1</num>\n</top>\n<top>\n<title>x</title>\n</top>\n", 1),
    ],
)
def test_bad_topics_name_the_line(tmp_path, name, content, line):
    (tmp_path / name).write_text(content)
    with pytest.raises(InputError) as info:
        read_topics(tmp_path / name)
    assert info.value.line == line


def test_bad_qrels_name_the_line(tmp_path):
    (tmp_path / "qrels").write_text("1 0 d1 1\n1 0 d2 high\n")
    with pytest.raises(InputError, match=r"qrels:2: relevance 'high'"):
        read_qrels(tmp_path / "qrels")


def test_run_file_round_trip(tmp_path):
    write_run(tmp_path / "run", {"1": [("a", 2.5), ("b", 1.0)], "2": [("c", 0.5)]}, tag="t")
    lines = (tmp_path / "run").read_text().splitlines()
    assert lines[0] == "1 Q0 a 1 2.500000 t" and lines[1].split()[3] == "2"
    assert read_run(tmp_path / "run") == {"1": {"a": 2.5, "b": 1.0}, "2": {"c": 0.5}}


def write_bytes(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


# (reader, file, content, line, bad byte, its column in characters)
NOT_UTF8 = [
    (read_topics, "q.trec", b"<top>\n<num>1</num><title>caf\xc3\xa9 \xe9</title>\n</top>\n", 2, 0xE9, 25),
    (read_topics, "q.trec.gz", b"<top>\n<num>1</num>\n<title>\xff</title>\n</top>\n", 3, 0xFF, 8),
    (read_topics, "queries.jsonl", b'{"_id": "q1", "text": "ok"}\n{"_id": "q2", "text": "\x80"}\n', 2, 0x80, 24),
    (read_topics, "q.tsv", b"1\tone\n2\tt\xc3wo\n", 2, 0xC3, 4),
    (read_topics, "q0.tsv", b"\xff1\tone\n", 1, 0xFF, 1),  # in the line the format is told from
    (read_qrels, "qrels", b"1 0 d1 1\n1 0 d\xfe2 1\n", 2, 0xFE, 6),
    (read_qrels, "test.tsv", b"query-id\tcorpus-id\tscore\nq\x911\td1\t1\n", 2, 0x91, 2),
    (read_run, "run", b"1 Q0 a 1 2.0 t\n1 Q0 \xc0 2 1.0 t\n", 2, 0xC0, 6),
]


@pytest.mark.parametrize("reader, name, content, line, byte, column", NOT_UTF8)
def test_bytes_that_are_not_utf8_name_file_line_and_column(tmp_path, reader, name, content, line, byte, column):
    path = write_bytes(tmp_path / name, content)
    with pytest.raises(InputError) as info:
        reader(path)
    assert str(info.value) == f"{path}:{line}: not valid UTF-8 (byte 0x{byte:02x} at column {column})"
    assert info.value.exit_code == 2


@pytest.mark.parametrize("reader, name, content, line, byte, column", NOT_UTF8)
def test_encoding_errors_replace(tmp_path, caplog, reader, name, content, line, byte, column):
    path = write_bytes(tmp_path / name, content)
    with caplog.at_level(logging.WARNING):
        result = reader(path, encoding_errors="replace")
    assert "\ufffd" in repr(result)
    assert f"{path}:{line}: not valid UTF-8" in caplog.text


def test_unclosed_top_is_an_error_not_a_lost_topic(tmp_path):
    path = tmp_path / "q.trec"
    path.write_text("<top>\n<num>1</num><title>one</title>\n<top>\n<num>2</num><title>two</title>\n</top>\n")
    with pytest.raises(InputError, match=r"q\.trec:1: <top> is not closed before the next <top> at line 3"):
        read_topics(path)


@pytest.mark.parametrize(
    "name, first, second, line",
    [
        ("q.tsv", "1\tone\n", "1\tother\n", 2),
        ("q.jsonl", '{"_id": "1", "text": "one"}\n', '{"_id": "1", "text": "other"}\n', 2),
        ("q.trec", "<top>\n<num>1</num><title>one</title>\n</top>\n", "<top><num>1</num><title>other</title></top>\n", 4),
    ],
)
def test_duplicate_query_ids(tmp_path, caplog, name, first, second, line):
    path = tmp_path / name
    path.write_text(first + second)
    with pytest.raises(InputError, match=rf"{name}:{line}: query id '1' .*line 1"):
        read_topics(path)
    path.write_text(first + first)
    with caplog.at_level(logging.WARNING):
        assert read_topics(path) == [("1", "one")]
    assert f"{name}:{line}:" in caplog.text and "read once" in caplog.text


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"text": "no id"}', "no '_id'"),
        ('{"_id": null, "text": "null id"}', "no '_id'"),
        ('{"_id": ["q"], "text": "list id"}', "string or an integer"),
        ('{"_id": "q2", "text": 7}', "'text' must be a string"),
    ],
)
def test_beir_queries_need_an_id_and_text(tmp_path, line, message):
    path = tmp_path / "queries.jsonl"
    path.write_text('{"_id": "q1", "text": "ok"}\n' + line + "\n")
    with pytest.raises(InputError, match=rf"queries\.jsonl:2: .*{message}"):
        read_topics(path)


@pytest.mark.parametrize("value", ["0.7", "inf", "-inf", "nan", "1e400", "0x1", "1.5"])
@pytest.mark.parametrize("header", ["query-id\tcorpus-id\tscore\n", ""])
def test_relevance_must_be_an_integer(tmp_path, header, value):
    path = tmp_path / "test.tsv"
    path.write_text(f"{header}q1\td1\t1\nq1\td2\t{value}\n")
    with pytest.raises(InputError, match=rf"test\.tsv:{2 + bool(header)}: relevance '{value}' is not an integer"):
        read_qrels(path)


def test_relevance_written_as_a_whole_float_is_read(tmp_path):
    (tmp_path / "qrels").write_text("1 0 d1 2.0\n1 0 d2 -1\n1 0 d3 1e1\n")
    assert read_qrels(tmp_path / "qrels") == {"1": {"d1": 2, "d2": -1, "d3": 10}}
