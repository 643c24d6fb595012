"""Scale-out on Ray (engine/index/distributed.py, engine/batch_run.py): an
index built with its encoding on a Ray actor pool — on a local Ray, and on a
simulated two-node cluster with a worker killed mid-build — is the index a
single-process build writes, and a pipeline run over a pool returns what one
process returns. Every Ray here is started by the test, on this machine's
loopback, and shut down after."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

# Before Ray is first imported: this process runs Lucene's JVM too (see ray_session.JVM_SAFE).
os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
ray = pytest.importorskip("ray")

from index_equality import assert_same_index  # noqa: E402

from ragline.engine.errors import InputError, MissingDependency  # noqa: E402
from ragline.engine.index.build import build_index, corpus_passages  # noqa: E402
from ragline.engine.index.layout import IndexDir  # noqa: E402
from ragline.engine.scale.encode_actor import EXIT_ONCE_VARIABLE  # noqa: E402
from ragline.retrievers.dense import EMBEDDINGS, FAISS_FILE, Dense  # noqa: E402
from ragline.retrievers.faiss_index import build_faiss_index, import_faiss  # noqa: E402

HYBRID = {"bm25": {}, "dense": {}}  # the packaged all-MiniLM-L6-v2, flat: as the hybrid_index fixture
# Ray's processes take the loopback address and listen on it alone.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@pytest.fixture(scope="module")
def queries(vaswani_queries) -> list[str]:
    return [text for _, text in vaswani_queries[:30]]




def embeddings(index: Path) -> np.ndarray:
    return np.fromfile(index / "dense" / EMBEDDINGS, dtype=np.float32)


@pytest.mark.slow
class TestLocalRay:
    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def local_ray(cls):
        with pytest.MonkeyPatch.context() as patch:
            for name, value in LOOPBACK.items():
                patch.setenv(name, value)
            ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
            yield
            ray.shutdown()

    def test_bm25_and_flat_dense_equal_the_single_process_build(self, vaswani_subset, hybrid_index, queries, tmp_path):
        out = tmp_path / "idx"
        meta = build_index(vaswani_subset, out, HYBRID, ray="auto", workers=2)
        assert meta["passages"] == 400
        assert_same_index(out, hybrid_index, queries)
        assert np.abs(embeddings(out) - embeddings(hybrid_index)).max() <= 1e-5
        assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # nothing left beside it

    def test_ivf_dense_equals_the_single_process_build(self, vaswani_subset, hybrid_index, queries, tmp_path):
        out = tmp_path / "idx"
        build_index(vaswani_subset, out, {"dense": {"factory": "IVF16,Flat"}}, ray="auto", workers=2)
        assert IndexDir.open(out).meta["components"]["dense"]["factory"] == "IVF16,Flat"
        # What a single-process build makes of the same embeddings (DenseIndexBuilder.close).
        reference = embeddings(hybrid_index).reshape(400, -1)
        single, _ = build_faiss_index(reference, "IVF16,Flat")
        built = import_faiss().read_index(str(out / "dense" / FAISS_FILE))
        for index in (single, built):
            import_faiss().extract_index_ivf(index).nprobe = 4  # a quarter of the lists: the training matters
        probe = Dense(str(hybrid_index)).encode(queries)
        (want_scores, want_rows), (got_scores, got_rows) = single.search(probe, 20), built.search(probe, 20)
        assert (got_rows == want_rows).all()
        assert np.abs(got_scores - want_scores).max() <= 1e-5

    def test_a_malformed_corpus_line_read_on_ray_is_the_usual_error_and_leaves_nothing(self, tmp_path):
        corpus = tmp_path / "corpus.jsonl"
        corpus.write_text('{"id": "a", "text": "alpha"}\n{"id": "b", "text": \n')
        with pytest.raises(InputError) as raised:
            build_index(corpus, tmp_path / "idx", {"dense": {}}, ray="auto", workers=1)
        assert str(raised.value).startswith(f"{corpus}:2: ") and "\n" not in str(raised.value)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]

    def test_pipeline_run_over_actors_equals_one_process(self, hybrid_index, vaswani_queries, tmp_path):
        from ragline.engine.batch_run import run_on_ray
        from ragline.engine.pipeline import Pipeline
        from ragline.engine.types import Query

        config = tmp_path / "hybrid.yaml"
        config.write_text(f"batch_size: 16\nstages:\n  - bm25: {{index: {hybrid_index}, k: 20}}\n"
                          f"  - dense: {{index: {hybrid_index}, k: 20}}\n  - fuse: {{method: rrf}}\n")
        topics = [Query(qid, text) for qid, text in vaswani_queries]
        got = run_on_ray(Pipeline.load(config), topics, workers=2)
        want = Pipeline.load(config).run([Query(q.id, q.text) for q in topics])

        def without_timings(query):
            result = query.to_dict()
            for step in result["trace"]:
                step.pop("seconds")
            return result

        assert [without_timings(q) for q in got] == [without_timings(q) for q in want]
        assert got[0].ranking[0].store is not None  # hits can still fetch their text here


@pytest.mark.slow
class TestTwoNodes:
    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def two_nodes(cls, tmp_path_factory):
        """A head that runs no work and two one-CPU nodes: the two encoding
        actors land one per node. The first actor to take a batch dies."""
        from ray.cluster_utils import Cluster

        marker = tmp_path_factory.mktemp("fault") / "an-actor-died"
        with pytest.MonkeyPatch.context() as patch:
            for name, value in {**LOOPBACK, EXIT_ONCE_VARIABLE: str(marker)}.items():
                patch.setenv(name, value)
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
            for _ in range(2):
                cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, logging_level=logging.WARNING)
            yield marker
            ray.shutdown()
            cluster.shutdown()

    def test_a_killed_worker_is_retried_and_the_build_equals_the_single_process_one(
            self, two_nodes, vaswani_subset, hybrid_index, queries, tmp_path):
        assert [n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]].count(1.0) == 2
        out = tmp_path / "idx"
        build_index(vaswani_subset, out, HYBRID, ray="auto", workers=2)
        assert two_nodes.exists(), "no actor died: the fault was not injected"
        assert_same_index(out, hybrid_index, queries)


@pytest.mark.slow
def test_the_run_command_on_its_own_local_ray_writes_what_one_process_returns(hybrid_index, tmp_path):
    from ragline.engine.pipeline import Pipeline
    from ragline.engine.types import Query

    config = tmp_path / "bm25.yaml"
    config.write_text(f"batch_size: 2\nstages:\n  - bm25: {{index: {hybrid_index}, k: 5}}\n")
    texts = ["microwave cavity resonance", "transistor noise", "ionosphere radio waves"]
    result = subprocess.run([sys.executable, "-m", "ragline.cli", "run", config, *[a for t in texts for a in ("-q", t)],
                             "--ray", "local", "--workers", "2", "--output", tmp_path / "out.jsonl"],
                            capture_output=True, text=True, timeout=600, env={**os.environ, **LOOPBACK})
    assert result.returncode == 0, result.stderr
    got = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    want = [q.to_dict() for q in Pipeline.load(config).run([Query(f"q{i}", t) for i, t in enumerate(texts)])]
    for rows in (got, want):
        for row in rows:
            row.pop("trace")
    assert got == want


def test_blocks_carry_each_passage_with_exactly_the_documents_read_for_it(tmp_path):
    """The driver's blocks and the build's batches cut from them (no Ray
    needed): chunked documents, a resumed build's committed passages left out,
    every document hash sent with its first passage — what a single-process
    build commits with each passage — and each passage with its own vectors."""
    from ragline.engine.index.distributed import _rebatched, blocks

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": " ".join(["w"] * (3 + i))}) + "\n" for i in range(6)))
    read = functools.partial(corpus_passages, corpus, "jsonl", "strict", 4, 1)
    hashes: list = []
    want = list(read(hashes))
    for skip in (0, 5):
        read_blocks = list(blocks(read, skip, block_rows=3))
        assert [len(block.pairs) for block in read_blocks][:-1] == [3] * (len(read_blocks) - 1)
        first_chunks = [p.doc_id for p, _ in want[skip:] if p.id in (p.doc_id, f"{p.doc_id}#0")]
        # Each block's "vectors": the passages' row numbers, so a batch shows which passages its vectors are.
        rows = iter(range(skip, len(want)))
        encoded = [(block, {"dense": np.array([[next(rows)] for _ in block.pairs], dtype=np.float32)})
                   for block in read_blocks]
        fed_hashes: list = []
        batches = []
        for batch, computed in _rebatched(iter(encoded), 4, fed_hashes):
            batches.append(batch)
            assert computed["dense"]["vectors"].ravel().tolist() == [want.index(pair) for pair in batch]
            assert [doc_id for doc_id, _, _ in fed_hashes] == [p.doc_id for p, _ in batch if p.doc_id in first_chunks
                                                               and p.id in (p.doc_id, f"{p.doc_id}#0")]
            fed_hashes.clear()
        assert [len(batch) for batch in batches][:-1] == [4] * (len(batches) - 1)
        assert [pair for batch in batches for pair in batch] == want[skip:]


def test_a_bad_ray_address_is_one_line_and_exit_2(vaswani_subset, tmp_path):
    result = subprocess.run([sys.executable, "-m", "ragline.cli", "index", vaswani_subset, "--out", tmp_path / "idx",
                             "--dense", "default", "--ray", "127.0.0.1:1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "cannot reach a Ray cluster at 127.0.0.1:1" in result.stderr
    assert not (tmp_path / "idx").exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="HOST:PORT"):
        from ragline.engine.scale.ray_session import ray_session

        with ray_session("nonsense"):
            pass


def test_ray_is_imported_only_when_asked_for(tmp_path):
    """Building, running and the command line without --ray never load Ray;
    asking for it without Ray installed is a clear error."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "alpha"}\n{"id": "b", "text": "beta"}\n')
    script = textwrap.dedent(f"""
        import sys
        from ragline.engine.registry import INDEX_COMPONENTS, register
        import ragline.cli.main, ragline.eval.cli, ragline.engine.batch_run, ragline.engine.index.distributed
        from ragline.engine.index.build import build_index
        from ragline.engine.index.component import IndexBuilder, IndexComponent

        class Counting(IndexBuilder):
            name = "counting"
            def open(self, folder): folder.mkdir()
            def add(self, passages, previous_rows=None): self.n = getattr(self, "n", 0) + len(passages)
            def close(self): return {{"count": self.n}}
            def abort(self): pass

        register(INDEX_COMPONENTS, "counting", IndexComponent(Counting))
        assert build_index({str(corpus)!r}, {str(tmp_path / "idx")!r}, {{"counting": {{}}}})["passages"] == 2
        assert "ray" not in sys.modules, sorted(m for m in sys.modules if m.startswith("ray"))
        sys.modules["ray"] = None  # as if it were not installed
        from ragline.engine.scale.ray_session import ray_session
        try:
            with ray_session("auto"):
                pass
        except Exception as error:
            print(type(error).__name__, error)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{MissingDependency.__name__} --ray needs ray: pip install 'ragline[ray]'"


@pytest.mark.slow
def test_a_ray_session_leaves_sigsegv_to_the_jvm():
    # Ray's driver turns on Python's faulthandler; its SIGSEGV handler then ran before the JVM's
    # (Lucene, in the same process), which raises SIGSEGV on purpose: a 1,400-document BM25 + dense
    # build on --ray died with "Fatal Python error: Segmentation fault" and exit 134.
    script = textwrap.dedent("""
        import faulthandler
        from ragline.engine.scale.ray_session import ray_session
        with ray_session("local"):
            print("inside", faulthandler.is_enabled())
        print("after", faulthandler.is_enabled())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **LOOPBACK})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["inside", "False", "after", "False"]


@pytest.mark.slow
def test_a_ray_build_large_enough_for_the_jvms_jit_runs_to_the_end_and_says_only_what_it_did(vaswani, tmp_path):
    """1,400 documents, BM25 + dense, two actors, run as a user runs it (from
    outside the checkout): Lucene's JIT is hot by then, and the JVM's routine
    SIGSEGVs met Python's faulthandler, which Ray's driver had turned on
    (exit 134 at about this size). A successful build prints its one line:
    Ray logged an error for each actor whose constructor arguments it kept in
    the object store (it did for Ray Data's actors), and a notice that token
    authentication is on."""
    from ragline.engine.data.corpus import read_corpus

    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for doc in itertools.islice(read_corpus(vaswani / "doc-text.trec"), 1400):
            f.write(json.dumps({"id": doc.id, "text": doc.text}) + "\n")
    result = subprocess.run([sys.executable, "-m", "ragline.cli", "index", corpus, "--out", tmp_path / "idx",
                             "--bm25", "--dense", "default", "--ray", "local", "--workers", "2"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, **LOOPBACK})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.strip() == f"indexed 1,400 documents (1,400 passages) into {tmp_path / 'idx'} with bm25, dense"
