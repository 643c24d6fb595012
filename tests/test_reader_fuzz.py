"""Property-based fuzzing of every data reader.

Each reader gets arbitrary bytes, valid files damaged (bytes flipped, the file
cut short, random bytes or lines inserted, lines doubled or dropped) and, for
JSON formats, valid records with one value (at any depth) dropped or replaced
by a JSON value of any type. The only
allowed outcomes: the file is read, or a ``RaglineError`` whose message names
the file (and a line in it, when it gives one). Never another exception, never
a hang.

``RAGLINE_FUZZ_EXAMPLES`` sets the examples per test: 25 by default, so the
file runs in seconds with the test suite; ``make fuzz`` runs thousands.
Failing examples are kept in ``.cache/hypothesis`` and replayed first.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import json
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from ragline.engine.data.corpus import detect_format, read_corpus
from ragline.engine.data.hotpotqa import read_hotpotqa
from ragline.engine.data.runfile import read_run
from ragline.engine.data.topics import read_qrels, read_topics
from ragline.engine.errors import RaglineError
from ragline.engine.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]

FUZZ = settings(
    max_examples=int(os.environ.get("RAGLINE_FUZZ_EXAMPLES", "25")),
    # Generous for inputs this small: going past it means a reader is slow on
    # some input (a quadratic regex, say), not that the machine is busy.
    deadline=timedelta(seconds=2),
    database=DirectoryBasedExampleDatabase(str(REPO / ".cache" / "hypothesis")),
    suppress_health_check=[HealthCheck.too_slow],
)
HANG_SECONDS = 20  # the deadline is checked once a call returns; this stops one that never does

# Small valid files, one per format: the seeds that mutations damage.
JSONL_CORPUS = (
    b'{"id": "a", "title": "Alpha", "text": "the first document"}\n'
    b'{"_id": 7, "text": "caf\xc3\xa9 second"}\n'
    b"\n"
    b'{"id": "c", "contents": "third"}\n'
)
TREC_CORPUS = (
    b"<DOC>\n<DOCNO>1</DOCNO>\n<TITLE>A title</TITLE>\n<TEXT>\nsome text\n</TEXT>\n</DOC>\n"
    b"<DOC><DOCNO>2</DOCNO> one line </DOC> <doc><docno>3</docno>x</doc>\n"
    b"<DOC>\n<DOCNO> 4 </DOCNO>\ncompact memories <b>have</b> flexible capacities\n</DOC>\n"
)
MARKDOWN = b"# A heading\n\nbody of the note\n"
TREC_TOPICS = (
    b"<top>\n<num>1</num><title>\nMEASUREMENT OF DIELECTRIC CONSTANT\n</title>\n</top>\n"
    b"<top>\n<num> Number: 2</num>\n<title> Topic: microwave\n<desc>a description\n</top>\n"
)
TSV_TOPICS = b"1\tfirst query\n2\tsecond query\n\n3\tthird\n"
BEIR_QUERIES = b'{"_id": "q1", "text": "first query"}\n{"_id": "q2", "text": "second", "metadata": {}}\n'
BEIR_QRELS = b"query-id\tcorpus-id\tscore\nq1\ta\t1\nq1\t7\t0\nq2\tc\t2\n"
TREC_QRELS = b"1 0 1239 1\n1 0 1502 1\n2 0 80 2.0\n"
RUN = b"1 Q0 a 1 2.500000 t\n1 Q0 b 2 1.000000 t\n2 Q0 c 1 0.5 t\n"
PIPELINE = b"top_k: 5\nstages:\n  - bm25: {index: idx, k: 10}\n  - dense: {index: idx, k: 10}\n  - fuse: {method: rrf, k: 60}\n"
HOTPOT = b"".join(
    json.dumps(record).encode() + b"\n"
    for record in (
        {"_id": "5a8b", "question": "Who wrote it?", "answer": "Ann", "type": "bridge", "level": "hard",
         "supporting_facts": [["Ann", 0], ["Book", 1]],
         "context": [["Ann", ["Ann is a writer.", " She wrote Book."]], ["Book", ["Book is long.", " By Ann."]]]},
        {"_id": "5a8c", "question": "Which is older?", "answer": "yes", "type": "comparison",
         "supporting_facts": [], "context": []},
    )
)


# --- strategies -------------------------------------------------------------

def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True) or [b""]


@st.composite
def damaged(draw, seed: bytes) -> bytes:
    """``seed`` after one to four random mutations: a byte flipped, the end cut
    off, bytes inserted, a long run of one byte (or of ``<a ``) inserted, a line inserted,
    doubled or dropped."""
    data = seed
    for _ in range(draw(st.integers(1, 4))):
        mutation = draw(st.sampled_from(("flip", "cut", "insert", "run", "insert_line", "double_line", "drop_line")))
        at = draw(st.integers(0, len(data)))
        if mutation == "flip" and data:
            at = min(at, len(data) - 1)
            data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
        elif mutation == "cut":
            data = data[:at]
        elif mutation == "insert":
            data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
        elif mutation == "run":  # long runs are what make a backtracking pattern slow
            data = data[:at] + draw(st.sampled_from([b" ", b"\t", b"\n", b"<", b"<a "])) * draw(st.integers(100, 3000)) + data[at:]
        else:
            lines = _lines(data)
            i = draw(st.integers(0, len(lines) - 1))
            if mutation == "insert_line":
                lines.insert(i, draw(st.binary(max_size=40)) + b"\n")
            elif mutation == "double_line":
                lines.insert(i, lines[i])
            else:
                del lines[i]
            data = b"".join(lines)
    return data


def contents(seed: bytes) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, or ``seed`` damaged."""
    return st.one_of(st.binary(max_size=300), damaged(seed))


def gzipped(seed: bytes) -> st.SearchStrategy[bytes]:
    """A ``.gz`` file: fuzzed content compressed, or the compressed file itself
    damaged (truncated, flipped), or not gzip at all."""
    return st.one_of(
        contents(seed).map(lambda data: gzip.compress(data, mtime=0)),
        damaged(gzip.compress(seed, mtime=0)),
        st.binary(max_size=100),
    )


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(exclude_categories=()), max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_DROP = object()


@st.composite
def retyped(draw, record: dict) -> dict:
    """``record`` with one value, at any depth, dropped or replaced by a JSON
    value of any type: what reaches a reader's field checks, which damaged
    bytes rarely do."""
    record = copy.deepcopy(record)
    container, key = record, draw(st.sampled_from(sorted(record)))
    while isinstance(container[key], (dict, list)) and container[key] and draw(st.booleans()):
        container = container[key]
        key = draw(st.sampled_from(sorted(container) if isinstance(container, dict) else range(len(container))))
    value = draw(_json_values | st.just(_DROP))
    if value is _DROP:
        del container[key]
    else:
        container[key] = value
    return record


def retyped_lines(seed: bytes) -> st.SearchStrategy[bytes]:
    """The JSONL ``seed`` with one of its records retyped."""
    records = [json.loads(line) for line in seed.splitlines() if line.strip()]

    @st.composite
    def lines(draw) -> bytes:
        i = draw(st.integers(0, len(records) - 1))
        changed = records[:i] + [draw(retyped(records[i]))] + records[i + 1 :]
        return b"".join(json.dumps(record).encode() + b"\n" for record in changed)

    return lines()


# --- the property -----------------------------------------------------------

@contextlib.contextmanager
def no_hang(seconds: int = HANG_SECONDS) -> Iterator[None]:
    def interrupt(signum, frame):
        raise TimeoutError(f"the reader was still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def reads_or_names_the_file(read: Callable[[Path], object], path: Path, files: dict[str, bytes]):
    """Write ``files`` (name → bytes) under a fresh folder, call ``read`` on
    ``path`` (relative to it) and check the outcome: a result, or a
    ``RaglineError`` naming one of the files (or the folder) and a line it has."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        target = root / path
        try:
            with no_hang():
                return read(target)
        except RaglineError as err:
            where = getattr(err, "path", None)
            assert where is not None, f"the error names no file: {err}"
            assert Path(where) == target or target in Path(where).parents, f"names another file: {err}"
            line = getattr(err, "line", None)
            assert str(err).startswith(f"{where}:{line}: " if line is not None else f"{where}: "), str(err)
            if line is not None:
                name = Path(where).relative_to(root).as_posix()
                assert line >= 1, str(err)
                if name in files and not name.endswith(".gz"):
                    assert line <= files[name].count(b"\n") + 1, f"line {line} is past the end: {err}"
            return None


def corpus(path: Path, fmt: str = "auto") -> list:
    documents = list(read_corpus(path, fmt))
    for doc in documents:
        assert isinstance(doc.id, str) and doc.id.strip() and isinstance(doc.text, str) and isinstance(doc.title, str)
    return documents


def topics(path: Path) -> list:
    result = read_topics(path)
    assert result and all(isinstance(q, str) and isinstance(t, str) and t.strip() for q, t in result)
    assert len({q for q, _ in result}) == len(result)
    return result


def qrels(path: Path) -> dict:
    result = read_qrels(path)
    assert all(isinstance(rel, int) for judged in result.values() for rel in judged.values())
    return result


# --- one test per reader ----------------------------------------------------

@FUZZ
@given(data=contents(JSONL_CORPUS) | retyped_lines(JSONL_CORPUS))
def test_jsonl_corpus(data):
    reads_or_names_the_file(corpus, Path("c.jsonl"), {"c.jsonl": data})


@FUZZ
@given(data=gzipped(JSONL_CORPUS))
def test_gzipped_jsonl_corpus(data):
    reads_or_names_the_file(corpus, Path("c.jsonl.gz"), {"c.jsonl.gz": data})


@FUZZ
@given(data=contents(TREC_CORPUS), fmt=st.sampled_from(["trec", "auto"]))
def test_trec_corpus(data, fmt):
    reads_or_names_the_file(lambda path: corpus(path, fmt), Path("docs"), {"docs": data})


@FUZZ
@given(data=gzipped(TREC_CORPUS))
def test_gzipped_trec_corpus(data):
    reads_or_names_the_file(corpus, Path("docs.trec.gz"), {"docs.trec.gz": data})


@FUZZ
@given(note=contents(MARKDOWN), other=contents(TREC_CORPUS))
def test_text_folder_corpus(note, other):
    files = {"folder/a.md": note, "folder/sub/b.txt": other}
    reads_or_names_the_file(corpus, Path("folder"), files)


@FUZZ
@given(data=contents(TREC_CORPUS))
def test_detect_format_of_a_folder(data):
    reads_or_names_the_file(detect_format, Path("folder"), {"folder/docs": data})


@FUZZ
@given(data=contents(JSONL_CORPUS) | retyped_lines(JSONL_CORPUS))
def test_beir_corpus(data):
    reads_or_names_the_file(corpus, Path("beir"), {"beir/corpus.jsonl": data})


@FUZZ
@given(data=contents(BEIR_QUERIES) | retyped_lines(BEIR_QUERIES))
def test_beir_queries(data):
    reads_or_names_the_file(topics, Path("queries.jsonl"), {"queries.jsonl": data})


@FUZZ
@given(data=contents(BEIR_QRELS))
def test_beir_qrels(data):
    reads_or_names_the_file(qrels, Path("qrels/test.tsv"), {"qrels/test.tsv": data})


@FUZZ
@given(data=contents(TREC_TOPICS) | contents(TSV_TOPICS))
def test_trec_and_tsv_topics(data):
    reads_or_names_the_file(topics, Path("topics"), {"topics": data})


@FUZZ
@given(data=gzipped(TREC_TOPICS))
def test_gzipped_topics(data):
    reads_or_names_the_file(topics, Path("topics.gz"), {"topics.gz": data})


@FUZZ
@given(data=contents(TREC_QRELS))
def test_trec_qrels(data):
    reads_or_names_the_file(qrels, Path("qrels"), {"qrels": data})


@FUZZ
@given(data=contents(RUN))
def test_run_file(data):
    reads_or_names_the_file(read_run, Path("run"), {"run": data})


@FUZZ
@given(data=contents(HOTPOT) | retyped_lines(HOTPOT))
def test_hotpotqa(data):
    reads_or_names_the_file(read_hotpotqa, Path("hotpot.jsonl"), {"hotpot.jsonl": data})


@pytest.fixture(scope="module")
def stage_modules_imported(tmp_path_factory):
    """The seed pipeline loaded once, so that importing the stage modules does
    not count against the first example's deadline."""
    path = tmp_path_factory.mktemp("pipeline") / "rag.yaml"
    path.write_bytes(PIPELINE)
    Pipeline.load(path)


@FUZZ
@given(data=contents(PIPELINE))
def test_pipeline_yaml(stage_modules_imported, data):
    reads_or_names_the_file(Pipeline.load, Path("rag.yaml"), {"rag.yaml": data})
