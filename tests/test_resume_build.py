"""Resuming a killed build (``ragline index --resume``): real BM25 + dense
builds of a Vaswani slice, SIGKILLed after a few committed batches or at a
random moment, resume and end with exactly the index a clean build writes,
encoding only the passages that were left; another build's folder, or a
corpus changed inside the committed part, is refused and kept."""

from __future__ import annotations

import json
import logging
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from index_equality import assert_same_index

from ragline.engine.errors import InputError
from ragline.engine.index.build import build_index
from ragline.engine.index.layout import IndexDir
from ragline.engine.index.progress import estimate_documents
from ragline.retrievers.bm25 import BM25

HYBRID = {"bm25": {}, "dense": {}}  # the packaged all-MiniLM-L6-v2, flat: as the hybrid_index fixture


def ragline(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ragline.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


# A build whose process kills itself (SIGKILL: no clean-up of any kind) right
# after its k-th batch is committed.
KILL_AFTER_COMMITS = textwrap.dedent("""
    import os, signal, sys, json
    from ragline.engine.index.build import build_index
    from ragline.engine.index.docstore import DocStore

    corpus, out, k, batch_size, options = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
    real_commit, commits = DocStore.commit, []

    def commit(self):
        real_commit(self)
        commits.append(1)
        if len(commits) == k:
            os.kill(os.getpid(), signal.SIGKILL)

    DocStore.commit = commit
    build_index(corpus, out, batch_size=batch_size, **options)
""")


def kill_after_commits(corpus: Path, out: Path, k: int, batch_size: int, **options) -> None:
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_COMMITS, str(corpus), str(out), str(k), str(batch_size),
                             json.dumps(options)], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists() and len(temporaries(out)) == 1


def temporaries(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]






@pytest.fixture(scope="module")
def queries(vaswani_queries) -> list[str]:
    return [text for _, text in vaswani_queries]


def test_killed_after_three_batches_resumes_to_the_clean_build_encoding_only_the_rest(
        vaswani_subset, hybrid_index, queries, tmp_path, encoded):
    out = tmp_path / "idx"
    kill_after_commits(vaswani_subset, out, k=3, batch_size=64, components=HYBRID)
    (killed,) = temporaries(out)

    # Other settings: refused in one line, exit 2, and the work is kept for a resume with the right ones.
    refused = ragline("index", vaswani_subset, "--out", out, "--resume", "--window", "50")
    assert refused.returncode == 2, refused.stderr
    (message,) = refused.stderr.strip().splitlines()
    assert message.startswith("error: the interrupted build of") and "build without --resume" in message
    assert "chunking" in message
    assert temporaries(out) == [killed]

    meta = build_index(vaswani_subset, out, HYBRID, batch_size=64, resume=True)
    assert meta["passages"] == 400 and len(encoded) == 400 - 3 * 64  # the committed 192 were not encoded again
    assert temporaries(out) == []
    assert_same_index(out, hybrid_index, queries)


def test_killed_at_a_random_moment_resumes_from_the_command_line(vaswani_subset, hybrid_index, queries, tmp_path):
    out = tmp_path / "idx"
    build = subprocess.Popen([sys.executable, "-c", KILL_AFTER_COMMITS, str(vaswani_subset), str(out), "0", "32",
                              json.dumps({"components": HYBRID})], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not any(embeddings.stat().st_size for embeddings in out.parent.glob(".idx.building-*/dense/embeddings.f32")):
        assert build.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(random.Random(17).uniform(0.0, 2.0))  # the batches are under way (it may even finish: fine too)
    build.kill()
    build.wait(timeout=60)
    finished = out.exists()

    resumed = ragline("-v", "index", vaswani_subset, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert finished or "resuming the interrupted build" in resumed.stderr
    assert resumed.stdout.startswith("indexed 400 documents (400 passages)")
    assert temporaries(out) == []
    assert_same_index(out, hybrid_index, queries)


def test_chunked_documents_split_across_batches_resume_whole_twice_and_a_changed_corpus_is_refused(
        vaswani_subset, queries, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(vaswani_subset.read_text())
    chunking = {"components": {"bm25": {}}, "window": 20, "overlap": 5}
    clean = tmp_path / "clean"
    build_index(corpus, clean, **chunking)
    out = tmp_path / "idx"
    kill_after_commits(corpus, out, k=5, batch_size=5, **chunking)
    # The 25 committed passages end inside a document: its other chunks are still to come.
    spans = _committed_spans(temporaries(out)[0])
    assert any(count < _passages_of(clean, doc_id) for doc_id, count in spans.items())

    lines = corpus.read_text().splitlines(keepends=True)
    first = json.loads(lines[0])
    corpus.write_text("".join([json.dumps({**first, "text": first["text"] + " revised"}) + "\n"] + lines[1:]))
    with pytest.raises(InputError, match=r"the corpus has changed since the interrupted build .*build without --resume"):
        build_index(corpus, out, resume=True, **chunking)
    assert len(temporaries(out)) == 1

    corpus.write_text("".join(lines))
    kill_after_commits(corpus, out, k=3, batch_size=5, resume=True, **chunking)  # killed again while resuming
    assert sum(_committed_spans(temporaries(out)[0]).values()) == 40
    build_index(corpus, out, resume=True, **chunking)
    assert temporaries(out) == []
    assert_same_index(out, clean, queries, retrievers=(BM25,))


def _committed_spans(folder: Path) -> dict[str, int]:
    from ragline.engine.index.docstore import DocStore

    store = DocStore(folder / "docstore.sqlite")
    try:
        return {doc_id: count for doc_id, (_, count) in store.document_spans().items()}
    finally:
        store.close()


def _passages_of(index: Path, doc_id: str) -> int:
    return IndexDir.open(index).docstore().document_spans()[doc_id][1]


def test_resume_with_nothing_to_resume_builds_from_the_start_and_says_so(tmp_path, caplog):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "alpha decay"}\n{"id": "b", "text": "beta decay"}\n')
    with caplog.at_level(logging.WARNING, logger="ragline.engine.index.build"):
        meta = build_index(corpus, tmp_path / "idx", {"bm25": {}}, resume=True)
    assert meta["documents"] == 2 and "no interrupted build of" in caplog.text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    both = ragline("index", corpus, "--out", tmp_path / "idx", "--update", "--resume")
    assert both.returncode == 2 and "--resume" in both.stderr


def test_the_progress_total_is_a_cheap_count_of_documents(vaswani, vaswani_subset, tmp_path):
    assert estimate_documents(vaswani / "doc-text.trec", "trec") == 11429
    assert estimate_documents(vaswani_subset, "jsonl") == 400
    (tmp_path / "docs").mkdir()
    for name in ("a.md", "b.txt", "skip.bin", ".hidden.md"):
        (tmp_path / "docs" / name).write_text("x")
    assert estimate_documents(tmp_path / "docs", "dir") == 2
