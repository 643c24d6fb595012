"""BM25's bulk searcher (retrievers/java/): the same hits as pyserini's own
batch search, document filters inside Lucene, and shipped classes that match
their sources."""

import ast
import json
import logging
import random
import shutil
import subprocess
import sys

import pytest

from ragline.retrievers.bm25 import BM25
from ragline.retrievers.java import build
from ragline.retrievers.java.bulk_searcher import BulkSearcher


@pytest.fixture(scope="module")
def texts(vaswani_queries):
    return [text for _, text in vaswani_queries]


@pytest.fixture(scope="module")
def bm25(vaswani_bm25_index):
    retriever = BM25(str(vaswani_bm25_index), k=1000)
    retriever.warm_up()
    return retriever


@pytest.fixture(scope="module")
def deep_rankings(bm25, texts):
    """Every match of every query: deeper than the 11,429 documents of Vaswani."""
    return bm25.search(texts, k=20_000)


@pytest.fixture(scope="module")
def allowed_ids(deep_rankings):
    """A third of the ids that match anything, and a few that are in no index."""
    matched = sorted({pid for ranking in deep_rankings for pid, _ in ranking})
    return frozenset(random.Random(19).sample(matched, len(matched) // 3) + ["no-such-id", ""])


@pytest.fixture
def fallback_bm25(vaswani_bm25_index, monkeypatch, caplog):
    """BM25 as it runs when the shipped class cannot be used (pyserini's searcher),
    opened while the class is made unloadable; checks that it said so."""

    class Unloadable:
        def __init__(self, *args):
            raise RuntimeError("simulated: ragline.lucene.BulkSearcher not found")

    def opened(k: int) -> BM25:
        with monkeypatch.context() as patch:
            patch.setattr("ragline.retrievers.bm25.BulkSearcher", Unloadable)
            with caplog.at_level(logging.WARNING, logger="ragline.retrievers.bm25"):
                retriever = BM25(str(vaswani_bm25_index), k=k)
                retriever.warm_up()
        assert "falls back to pyserini's batch_search" in caplog.text
        assert not isinstance(retriever._searcher, BulkSearcher)
        return retriever

    return opened


def test_bulk_path_is_used(bm25):
    assert isinstance(bm25._searcher, BulkSearcher)


def test_equals_pyserini_batch_search_at_depth_1000(bm25, texts, vaswani_bm25_index):
    from ragline.retrievers.lucene_runtime import import_pyserini

    searcher = import_pyserini("pyserini.search.lucene").LuceneSearcher(str(vaswani_bm25_index / "bm25"))
    searcher.set_bm25(0.9, 0.4)
    qids = [str(i) for i in range(len(texts))]
    results = searcher.batch_search(texts, qids, k=1000, threads=2)
    theirs = [[(hit.docid, hit.score) for hit in results[qid]] for qid in qids]

    ours = bm25.search(texts)
    assert len(ours) == 93 and sum(map(len, ours)) > 90_000
    # The same ids, in the same order, with the same float scores: no tolerance.
    assert ours == theirs


def test_filter_equals_the_deep_ranking_restricted(bm25, texts, deep_rankings, allowed_ids):
    filtered = bm25.search(texts, k=1000, allowed=allowed_ids)
    assert sum(map(len, filtered)) > 50_000
    for got, deep in zip(filtered, deep_rankings):
        want = [(pid, score) for pid, score in deep if pid in allowed_ids][:1000]
        # Anserini orders hits by score, then id: removing documents leaves the order of the rest.
        assert [pid for pid, _ in got] == [pid for pid, _ in want]
        # Its scores are rounded to 4 decimals, and each one within 1e-4 of the score above
        # it is lowered by 1e-6 per place behind the start of that run ("tie adjustment");
        # removing documents changes those places, so a score may move by a few 1e-6, never
        # by a rounding step. test_filter_equals_anserinis_own_filtered_search holds them exactly.
        assert [score for _, score in got] == pytest.approx([score for _, score in want], abs=1e-4)


def test_filter_equals_anserinis_own_filtered_search(bm25, texts, allowed_ids, fallback_bm25):
    """The fallback runs Anserini's own search (document loading, tie adjustment and all)
    on the same filtered query: the bulk searcher must match it exactly."""
    some = texts[:20]
    assert fallback_bm25(k=1000).search(some, allowed=allowed_ids) == bm25.search(some, allowed=allowed_ids)


def test_fallback_without_filter_equals_bulk(bm25, texts, fallback_bm25):
    assert fallback_bm25(k=50).search(texts) == bm25.search(texts, k=50)


def test_a_jvm_without_the_class_falls_back(vaswani_bm25_index):
    """A JVM started without ragline's classes on its classpath (a JVM's classpath is fixed
    when it starts): searches still work, through pyserini, and say so. In a child process,
    since this one's JVM already has the classes."""
    script = (
        "import sys, logging; logging.basicConfig(level=logging.WARNING)\n"
        "from pathlib import Path; from ragline.retrievers import lucene_runtime\n"
        "lucene_runtime.JAVA_CLASSES = Path('/nonexistent')\n"
        "from ragline.retrievers.bm25 import BM25\n"
        "print(BM25(sys.argv[1], k=3).search(['microwave dielectric'])[0])\n"
    )
    child = subprocess.run([sys.executable, "-c", script, str(vaswani_bm25_index)], capture_output=True, text=True,
                           timeout=300)
    assert child.returncode == 0, child.stderr
    assert "falls back to pyserini's batch_search" in child.stderr
    assert len(ast.literal_eval(child.stdout)) == 3


def test_empty_filter_gives_no_hits(bm25, texts):
    assert bm25.search(texts[:3], allowed=frozenset()) == [[], [], []]


def test_filter_takes_a_selection_or_any_collection_of_ids(bm25, texts, deep_rankings):
    from ragline.engine.index.docstore import Selection

    wanted = [pid for pid, _ in deep_rankings[0][:5]]
    expected = [(pid, score) for pid, score in deep_rankings[0] if pid in wanted]
    assert bm25.search(texts[:1], allowed=wanted) == [expected]
    assert bm25.search(texts[:1], allowed=Selection(rows=(), ids=frozenset(wanted))) == [expected]


def test_any_id_survives_the_trip(tmp_path):
    """Ids travel as one string cut by code-point lengths: non-ASCII, astral, blank-containing."""
    from ragline.engine.index.build import build_index

    ids = ["plain", "café-ß", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🙂", "with space\tand tab"]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": f"shared words {n} " * (n + 1)}) + "\n"
                              for n, i in enumerate(ids)), encoding="utf-8")
    build_index(corpus, tmp_path / "idx", {"bm25": {}})
    (hits,) = BM25(str(tmp_path / "idx"), k=10).search(["shared words"])
    found = {pid.split("#")[0] for pid, _ in hits}  # passage ids may carry a chunk suffix
    assert found == set(ids)


def test_a_broken_index_is_an_error_not_a_fallback(tmp_path, caplog):
    from ragline.engine.errors import RaglineError
    from ragline.engine.index.build import build_index

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "alpha"}) + "\n")
    build_index(corpus, tmp_path / "idx", {"bm25": {}})
    for commit in (tmp_path / "idx" / "bm25").glob("segments_*"):
        commit.unlink()
    with caplog.at_level(logging.WARNING), pytest.raises(RaglineError, match="cannot open the Lucene index"):
        BM25(str(tmp_path / "idx")).search(["alpha"])
    assert "falls back" not in caplog.text


def test_shipped_classes_match_their_sources():
    """The classes were rebuilt (python -m ragline.retrievers.java.build) after the last edit
    of any Java source here, and are the files that build wrote."""
    stamp = json.loads(build.STAMP.read_text())
    assert stamp["sources_sha256"] == build.sources_digest(), "Java sources changed: rebuild the classes"
    assert stamp["classes"] == build.class_digests(build.HERE)


def test_shipped_classes_are_small():
    sizes = [path.stat().st_size for path in build.HERE.rglob("*.class")]
    assert sizes and sum(sizes) < 32 * 1024


def test_a_fresh_build_is_byte_identical(tmp_path):
    """javac's output depends only on its version, the sources and the signatures on the
    classpath: with the javac version the classes were built with, a rebuild is byte-identical.
    Another version must still compile the sources; its bytes may differ."""
    from ragline.retrievers.lucene_runtime import anserini_jar

    javac = build.find_javac()
    if javac is None or shutil.which(javac) is None:
        pytest.skip("no javac here: the shipped classes are used as they are")
    try:
        version = build.javac_version(javac)
    except (OSError, subprocess.CalledProcessError, RuntimeError) as err:
        pytest.skip(f"javac does not run here: {err}")
    build.compile_classes(tmp_path, javac, anserini_jar())
    stamp = json.loads(build.STAMP.read_text())
    if version != stamp["javac"]:
        pytest.skip(f"javac {version} compiled the sources; the shipped classes are from javac {stamp['javac']}")
    assert build.class_digests(tmp_path) == stamp["classes"]
