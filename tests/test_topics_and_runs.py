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
