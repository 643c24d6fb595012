"""Updating an index: added, replaced and deleted documents; the result ranks
exactly like a rebuild (real data: Vaswani); an update is all or nothing
(SIGKILL at each step); readers keep working while an update commits."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from ragline.engine.data.corpus import read_corpus
from ragline.engine.errors import InputError
from ragline.engine.index.build import build_index
from ragline.engine.index.index import Index
from ragline.engine.index.layout import IndexDir
from ragline.engine.index.update import update_index
from ragline.engine.types import Document
from ragline.retrievers.bm25 import BM25
from ragline.retrievers.dense import Dense


def write_jsonl(path, documents):
    path.write_text("".join(json.dumps({"id": d.id, "title": d.title, "text": d.text}) + "\n" for d in documents))
    return path


def edited(doc: Document) -> Document:
    return Document(doc.id, doc.text + " revised measurement of the dielectric constant", doc.title)


@pytest.fixture(scope="module")
def vaswani_versions(vaswani, tmp_path_factory):
    """Corpus A: Vaswani's first 250 documents. Corpus B: A with 10 of them
    deleted and 10 changed in place, then the next 50 appended. ``changes``
    holds only what B adds or changes (for an update that is not a snapshot)."""
    docs = list(itertools.islice(read_corpus(vaswani / "doc-text.trec"), 300))
    first, extra = docs[:250], docs[250:]
    deleted = {d.id for d in first[5:250:25]}
    changed = {d.id for d in first[10:250:25]}
    b = [edited(d) if d.id in changed else d for d in first if d.id not in deleted] + extra
    folder = tmp_path_factory.mktemp("versions")
    return {
        "A": write_jsonl(folder / "a.jsonl", first),
        "B": write_jsonl(folder / "b.jsonl", b),
        "changes": write_jsonl(folder / "changes.jsonl", [d for d in b if d.id in changed] + extra),
        "deleted": sorted(deleted),
        "queries": [text for _, text in _queries(vaswani)[:25]],
    }


def _queries(vaswani):
    from ragline.engine.data.topics import read_topics

    return read_topics(vaswani / "query-text.trec")


def assert_same_rankings(updated, rebuilt, queries, retrievers=(BM25,), k=20, **options):
    for retriever in retrievers:
        got = retriever(str(updated), k=k, **options).search(queries)
        want = retriever(str(rebuilt), k=k, **options).search(queries)
        for query, g, w in zip(queries, got, want):
            assert [pid for pid, _ in g] == [pid for pid, _ in w], (retriever.name, query)
            assert max((abs(a - b) for (_, a), (_, b) in zip(g, w)), default=0.0) <= 1e-5, (retriever.name, query)




@pytest.mark.parametrize("snapshot", [True, False], ids=["whole-corpus", "changes-only"])
def test_update_ranks_exactly_like_a_rebuild_bm25_and_flat_dense(vaswani_versions, tmp_path, encoded, snapshot):
    v = vaswani_versions
    components = {"bm25": {}, "dense": {}}
    build_index(v["B"], tmp_path / "rebuilt", components)
    build_index(v["A"], tmp_path / "idx", components)
    reader = Dense(str(tmp_path / "idx"), k=10)  # open before the update: keeps answering from the old files
    answered_before = reader.search(v["queries"][:3])
    encoded.clear()
    if snapshot:
        meta = update_index(v["B"], tmp_path / "idx", delete_missing=True)
    else:
        meta = update_index(v["changes"], tmp_path / "idx", delete=v["deleted"])
    change = meta["last_update"]
    assert (change["added"], change["replaced"], change["deleted"]) == (50, 10, 10)
    assert change["unchanged"] == (230 if snapshot else 0) and meta["documents"] == 290
    assert len(encoded) == 60 and change["passages_reused"] == 230  # unchanged documents are not re-encoded
    assert IndexDir.open(tmp_path / "idx").docstore().ids_in_row_order() == \
        IndexDir.open(tmp_path / "rebuilt").docstore().ids_in_row_order()
    assert_same_rankings(tmp_path / "idx", tmp_path / "rebuilt", v["queries"], (BM25, Dense))
    assert reader.search(v["queries"][:3]) == answered_before


def test_chunked_documents_are_updated_as_a_whole(vaswani_versions, tmp_path):
    v = vaswani_versions
    build_index(v["B"], tmp_path / "rebuilt", {"bm25": {}}, window=30, overlap=10)
    build_index(v["A"], tmp_path / "idx", {"bm25": {}}, window=30, overlap=10)
    meta = update_index(v["B"], tmp_path / "idx", delete_missing=True)
    assert meta["passages"] == IndexDir.open(tmp_path / "rebuilt").meta["passages"]
    assert IndexDir.open(tmp_path / "idx").docstore().ids_in_row_order() == \
        IndexDir.open(tmp_path / "rebuilt").docstore().ids_in_row_order()
    assert_same_rankings(tmp_path / "idx", tmp_path / "rebuilt", v["queries"])


def test_ivf_update_equals_a_rebuild_when_training_sees_the_same_vectors(vaswani_versions, tmp_path):
    """IVF retrains on the updated matrix; k-means is seeded, so an update and a
    rebuild train on the same vectors and give the same lists."""
    v = vaswani_versions
    components = {"dense": {"factory": "IVF8,Flat"}}
    build_index(v["B"], tmp_path / "rebuilt", components)
    build_index(v["A"], tmp_path / "idx", components)
    update_index(v["B"], tmp_path / "idx", delete_missing=True)
    assert_same_rankings(tmp_path / "idx", tmp_path / "rebuilt", v["queries"], (Dense,), nprobe=2)


def test_the_python_api_adds_updates_and_deletes_chunked_documents_whole(tmp_path):
    long_text = " ".join(f"word{i}" for i in range(60)) + " zebra"
    write_jsonl(tmp_path / "c.jsonl", [Document("long", long_text), Document("short", "tiny note")])
    build_index(tmp_path / "c.jsonl", tmp_path / "idx", {"bm25": {}}, window=20, overlap=0)
    index = Index(tmp_path / "idx")
    with pytest.raises(InputError, match="'short' is already in the index"):
        index.add([Document("short", "again")])
    with pytest.raises(InputError, match="'new' is not in the index"):
        index.update([Document("new", "x")])
    index.update([Document("long", "a much shorter text about a giraffe")])
    store = IndexDir.open(tmp_path / "idx").docstore()
    assert store.ids_in_row_order() == ["long", "short"]  # its four chunks became one passage
    assert [pid for pid, _ in BM25(str(tmp_path / "idx")).search(["zebra"])[0]] == []
    index.add([Document("extra", "zebra crossing")])
    meta = index.delete(["short", "not-there"])
    assert meta["last_update"]["deleted"] == 1
    assert IndexDir.open(tmp_path / "idx").docstore().ids_in_row_order() == ["long", "extra"]
    with pytest.raises(InputError, match="no documents"):
        index.delete(["long", "extra"])


def test_bad_update_input_changes_nothing(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [Document("a", "alpha"), Document("b", "beta")])
    build_index(tmp_path / "a.jsonl", tmp_path / "idx", {"bm25": {}})
    before = (tmp_path / "idx" / "meta.json").read_text()
    (tmp_path / "dup.jsonl").write_text('{"id": "c", "text": "x"}\n{"id": "c", "text": "y"}\n')
    with pytest.raises(InputError, match=r"dup.jsonl:2: duplicate document id 'c'"):
        update_index(tmp_path / "dup.jsonl", tmp_path / "idx")
    with pytest.raises(InputError, match="both given and to be deleted"):
        update_index(tmp_path / "a.jsonl", tmp_path / "idx", delete=["a"])
    assert (tmp_path / "idx" / "meta.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "dup.jsonl", "idx"]


def ragline(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ragline.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_cli_update_with_a_file_of_ids_to_delete(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [Document("a", "alpha decay"), Document("b", "beta decay")])
    write_jsonl(tmp_path / "new.jsonl", [Document("c", "gamma decay")])
    (tmp_path / "gone.txt").write_text("# ids to remove\nb\n")
    assert ragline("index", "a.jsonl", "--out", "idx", "--bm25", cwd=tmp_path).returncode == 0
    result = ragline("index", "new.jsonl", "--out", "idx", "--update", "--delete", "gone.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("updated idx: 1 added, 0 replaced, 0 unchanged, 1 deleted; now 2 documents")
    assert IndexDir.open(tmp_path / "idx").docstore().ids_in_row_order() == ["a", "c"]
    for refused in (["--delete", "gone.txt"], ["--update", "--window", "5"]):
        result = ragline("index", "new.jsonl", "--out", "idx", *refused, cwd=tmp_path)
        assert result.returncode == 2, result.stderr


# An update whose process kills itself (SIGKILL: no clean-up at all) at one step.
KILL_AT_STEP = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from swap_kill_points import die, install
    from ragline.engine.index import update

    step = sys.argv[1]
    install(step, {out!r}, exchange=step != "between_renames")
    real_batches = update._batches

    def batches(*args):
        for batch in real_batches(*args):
            yield batch
            if step == "while_writing":
                die()

    def reading(self, documents):
        die()

    update._batches = batches
    if step == "while_reading":
        update._Incoming.read = reading
    update.update_index({corpus!r}, {out!r}, delete_missing=True, batch_size=50)
""")


STEPS = ["while_reading", "while_writing", "before_swap", "between_renames", "before_removing_the_old"]


def test_sigkill_at_each_step_of_an_update_leaves_the_old_or_the_new_index(vaswani_versions, tmp_path):
    v = vaswani_versions
    out, rebuilt = tmp_path / "idx", tmp_path / "rebuilt"
    build_index(v["B"], rebuilt, {"bm25": {}})
    queries = v["queries"][:10]
    build_index(v["A"], out, {"bm25": {}})
    old_rankings = BM25(str(out), k=10).search(queries)
    new_rankings = BM25(str(rebuilt), k=10).search(queries)
    assert old_rankings != new_rankings
    for step in STEPS:
        script = KILL_AT_STEP.format(tests=str(Path(__file__).parent), corpus=str(v["B"]), out=str(out))
        killed = subprocess.run([sys.executable, "-c", script, step], capture_output=True, text=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, (step, killed.stderr)
        if step == "between_renames":
            assert not out.exists()  # the old index waits beside its place; the next update restores it
            update_index(v["A"], out, delete_missing=True)  # puts it back (and changes nothing)
        answer = BM25(str(out), k=10).search(queries)
        assert answer == (new_rankings if step == "before_removing_the_old" else old_rankings), step
        if step == "before_removing_the_old":
            build_index(v["A"], out, {"bm25": {}})  # back to A for the next step
    update_index(v["B"], out, delete_missing=True)
    assert_same_rankings(out, rebuilt, queries)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "rebuilt"]


def test_readers_see_the_old_or_the_new_index_while_updates_commit(vaswani_versions, tmp_path):
    v = vaswani_versions
    out = tmp_path / "idx"
    build_index(v["B"], tmp_path / "rebuilt", {"bm25": {}})
    build_index(v["A"], out, {"bm25": {}})
    queries = v["queries"][:5]
    versions = [BM25(str(out), k=10).search(queries), BM25(str(tmp_path / "rebuilt"), k=10).search(queries)]
    warm = BM25(str(out), k=10)
    warm.warm_up()  # opened before every update: must keep answering from its files
    errors: list[BaseException] = []
    seen: list[int] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                answer = BM25(str(out), k=10).search(queries)
                seen.append(versions.index(answer))
                assert warm.search(queries) == versions[0]
            except BaseException as error:  # any failure of a reader is the finding
                errors.append(error)
                return

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for corpus in (v["B"], v["A"], v["B"]):
            update_index(corpus, out, delete_missing=True)
    finally:
        done.set()
        for reader in readers:
            reader.join(timeout=60)
    assert not errors, errors[0]
    assert seen and set(seen) <= {0, 1}


def test_sigkill_at_random_moments_of_real_cli_updates(vaswani_versions, tmp_path):
    """BM25 + dense updates through the command line, killed at random times."""
    import random
    import time

    v = vaswani_versions
    out = tmp_path / "idx"
    build_index(v["B"], tmp_path / "rebuilt", {"bm25": {}})
    build_index(v["A"], out, {"bm25": {}, "dense": {}})
    queries = v["queries"][:10]
    versions = [BM25(str(out), k=10).search(queries), BM25(str(tmp_path / "rebuilt"), k=10).search(queries)]
    rng = random.Random(0)
    for _ in range(3):
        process = subprocess.Popen([sys.executable, "-m", "ragline.cli", "index", v["B"], "--out", out, "--update",
                                    "--delete-missing"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 12.0))
        process.kill()
        process.wait(timeout=60)
        assert BM25(str(out), k=10).search(queries) in versions
    result = ragline("index", v["B"], "--out", out, "--update", "--delete-missing")
    assert result.returncode == 0, result.stderr
    assert_same_rankings(out, tmp_path / "rebuilt", queries)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "rebuilt"]


def test_concurrent_updates_are_applied_one_after_the_other(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [Document("a", "alpha")])
    build_index(tmp_path / "a.jsonl", tmp_path / "idx", {"bm25": {}})
    errors: list[BaseException] = []

    def add(doc_id: str) -> None:
        try:
            Index(tmp_path / "idx").add([Document(doc_id, f"text of {doc_id}")])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=add, args=(name,)) for name in ("b", "c", "d")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[0]
    assert sorted(IndexDir.open(tmp_path / "idx").docstore().ids_in_row_order()) == ["a", "b", "c", "d"]


def test_an_index_built_before_content_hashes_counts_every_given_document_as_changed(tmp_path):
    import sqlite3

    write_jsonl(tmp_path / "a.jsonl", [Document("a", "alpha"), Document("b", "beta")])
    build_index(tmp_path / "a.jsonl", tmp_path / "idx", {"bm25": {}})
    with sqlite3.connect(tmp_path / "idx" / "docstore.sqlite") as conn:
        conn.execute("DROP TABLE documents")
    first = update_index(tmp_path / "a.jsonl", tmp_path / "idx", delete_missing=True)["last_update"]
    assert (first["replaced"], first["unchanged"]) == (2, 0)
    second = update_index(tmp_path / "a.jsonl", tmp_path / "idx", delete_missing=True)["last_update"]
    assert (second["replaced"], second["unchanged"]) == (0, 2)  # the update recorded the hashes
