"""Sharded indexes in one process: built, searched, filtered, updated and
resumed, each checked against one index over the same documents."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ragline.engine.data.corpus import read_corpus
from ragline.engine.errors import InputError, RaglineError
from ragline.engine.index.build import build_index
from ragline.engine.index.filters import FilterError
from ragline.engine.index.index import Index
from ragline.engine.index.sharded_build import build_sharded_index
from ragline.engine.index.sharding import ShardedIndex, is_sharded, shard_of
from ragline.engine.retrieval_pipeline import retrieval_pipeline
from ragline.engine.types import Document, Query
from ragline.retrievers.bm25 import BM25
from ragline.retrievers.dense import Dense


def assert_equal_rankings(one, sharded, tolerance=1e-5):
    assert len(one) == len(sharded)
    for expected, got in zip(one, sharded):
        assert [pid for pid, _ in got] == [pid for pid, _ in expected]
        assert all(abs(a - b) <= tolerance for (_, a), (_, b) in zip(expected, got))


@pytest.fixture(scope="module")
def texts(vaswani_queries) -> list[str]:
    return [text for _, text in vaswani_queries]


@pytest.fixture(scope="module")
def three_shards(vaswani, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "idx"
    build_sharded_index(vaswani / "doc-text.trec", out, {"bm25": {}}, 3)
    return out


@pytest.fixture(scope="module")
def hybrid_shards(vaswani_subset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hybrid-shards") / "idx"
    build_sharded_index(vaswani_subset, out, {"bm25": {}, "dense": {}}, 2)
    return out


def test_the_assignment_is_stable_and_spreads_documents(three_shards):
    # Fixed forever: indexes on disk rely on it.
    assert shard_of("doc-1", 3) == 1
    assert [shard_of(str(i), 3) for i in range(6)] == [1, 2, 2, 1, 1, 2]
    index = ShardedIndex.open(three_shards)
    sizes = [shard.meta["documents"] for shard in index.shards]
    assert sum(sizes) == index.root.meta["documents"] == 11429
    assert min(sizes) > 3500
    for number, shard in enumerate(index.shards):
        ids = shard.docstore().ids_in_row_order()
        assert all(shard_of(pid, 3) == number for pid in ids)


def test_sharded_bm25_equals_one_index_on_every_vaswani_query_at_depth_1000(three_shards, vaswani_bm25_index, texts):
    """Every shard scores with the whole collection's statistics: ids and scores equal one index's."""
    one = BM25(str(vaswani_bm25_index)).search(texts, 1000)
    sharded = BM25(str(three_shards)).search(texts, 1000)
    assert sum(map(len, one)) > 50_000
    assert_equal_rankings(one, sharded, tolerance=0.0)


def test_without_global_statistics_the_shards_would_score_differently(three_shards, vaswani_bm25_index, texts):
    """What the statistics are for: a shard scoring with its own gives other scores."""
    index = ShardedIndex.open(three_shards)
    alone = BM25(str(index.shards[0].path)).search(texts[:5], 10)
    whole = BM25(str(vaswani_bm25_index)).search(texts[:5], 1000)
    scores = {pid: score for found in whole for pid, score in found}
    assert any(abs(score - scores.get(pid, score)) > 1e-3 for found in alone for pid, score in found)


def test_sharded_dense_and_hybrid_equal_one_index(hybrid_shards, hybrid_index, texts):
    for kind in (BM25, Dense):
        assert_equal_rankings(kind(str(hybrid_index)).search(texts, 400), kind(str(hybrid_shards)).search(texts, 400))
    one = retrieval_pipeline(str(hybrid_index), "hybrid", k=20).run(texts)
    sharded = retrieval_pipeline(str(hybrid_shards), "hybrid", k=20).run(texts)
    for a, b in zip(one, sharded):
        assert [h.id for h in a.ranking] == [h.id for h in b.ranking]
        assert [p.text for p in a.passages] == [p.text for p in b.passages]  # read from the owning shard
        assert not b.missing_shards() and "partial" not in b.to_dict()


@pytest.fixture(scope="module")
def tagged_corpus(vaswani, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tagged") / "corpus.jsonl"
    with path.open("w") as f:
        for i, doc in enumerate(read_corpus(vaswani / "doc-text.trec")):
            if i == 600:
                break
            metadata = {"year": 1950 + i % 20, "lang": ["en", "de", "fr"][i % 3], **({"rare": "yes"} if i < 2 else {})}
            f.write(json.dumps({"id": doc.id, "text": doc.text, "metadata": metadata}) + "\n")
    return path


def test_metadata_filters_on_a_sharded_index_equal_one_indexs(tagged_corpus, tmp_path, texts):
    build_index(tagged_corpus, tmp_path / "one", {"bm25": {}})
    build_sharded_index(tagged_corpus, tmp_path / "sharded", {"bm25": {}}, 3)
    rare = [json.loads(line)["id"] for line in tagged_corpus.read_text().splitlines()[:2]]
    assert {shard_of(pid, 3) for pid in rare} != {0, 1, 2}  # a field that some shards do not have at all
    for query_filter in ("year>=1965", "lang=de and year<1960", "lang in (en, fr)", "rare=yes or year=1951"):
        one = BM25(str(tmp_path / "one"), k=50).run([Query(str(i), t, filter=query_filter) for i, t in enumerate(texts)])
        sharded = BM25(str(tmp_path / "sharded"), k=50).run([Query(str(i), t, filter=query_filter)
                                                              for i, t in enumerate(texts)])
        for a, b in zip(one, sharded):
            assert [(h.id, h.score) for h in a.ranking] == [(h.id, h.score) for h in b.ranking]
    stage = BM25(str(tmp_path / "sharded"))
    assert set(stage.metadata_fields()) == {"year", "lang", "rare"}
    with pytest.raises(FilterError, match="nosuch"):
        stage.check_filter("nosuch=1")


def test_updates_go_to_the_owning_shards_and_equal_the_same_update_of_one_index(tmp_path, vaswani_subset, texts):
    build_index(vaswani_subset, tmp_path / "one", {"bm25": {}, "dense": {}})
    build_sharded_index(vaswani_subset, tmp_path / "sharded", {"bm25": {}, "dense": {}}, 3)
    ids = [d.id for d in read_corpus(vaswani_subset)]
    changes = [Document("new-1", "the magnetic field of a rotating disc"), Document(ids[5], "radio waves in the ionosphere")]
    owners = {shard_of(d.id, 3) for d in changes}
    before = {n: s.path.name for n, s in enumerate(ShardedIndex.open(tmp_path / "sharded").shards)}
    for path in ("one", "sharded"):
        Index(tmp_path / path).upsert(changes)
    named_before_the_delete = {s.path.name for s in ShardedIndex.open(tmp_path / "sharded").shards}
    for path in ("one", "sharded"):
        Index(tmp_path / path).delete([ids[7], ids[8]])
    after = ShardedIndex.open(tmp_path / "sharded")
    touched = owners | {shard_of(ids[7], 3), shard_of(ids[8], 3)}
    assert {n for n, s in enumerate(after.shards) if s.path.name != before[n]} == touched
    assert after.root.meta["documents"] == len(ids) - 1
    assert after.root.meta["last_update"]["deleted"] == 2
    for kind in (BM25, Dense):
        assert_equal_rankings(kind(str(tmp_path / "one")).search(texts, 100), kind(str(tmp_path / "sharded")).search(texts, 100))
    # The named folders, and the versions the last update replaced (kept for readers until the next update).
    named = {s.path.name for s in after.shards}
    assert {p.name for p in (tmp_path / "sharded").iterdir()} == {".ragline-output", "meta.json", *named,
                                                                  *named_before_the_delete}


def test_a_failed_update_changes_no_shard(tmp_path, vaswani_subset, texts):
    out = tmp_path / "sharded"
    build_sharded_index(vaswani_subset, out, {"bm25": {}}, 3)
    listing = sorted(p.name for p in out.iterdir())
    before = BM25(str(out)).search(texts, 20)
    # Index.update refuses unknown ids, checked shard by shard: one shard has been written when another refuses.
    known = [d.id for d in read_corpus(vaswani_subset)]
    first = next(pid for pid in known if shard_of(pid, 3) == 0)
    unknown = next(f"nope-{i}" for i in range(100) if shard_of(f"nope-{i}", 3) == 2)
    with pytest.raises(InputError, match=unknown):
        Index(out).update([Document(first, "changed"), Document(unknown, "new")])
    assert sorted(p.name for p in out.iterdir()) == listing
    assert BM25(str(out)).search(texts, 20) == before


KILL_IN_SHARDED_UPDATE = textwrap.dedent("""
    import os, signal, sys
    from ragline.engine.index import sharded_update, update
    from ragline.engine.index.index import Index
    from ragline.engine.types import Document

    step, out = sys.argv[1], sys.argv[2]
    real_write, real_commit = update.write_changed, sharded_update.atomic_write_text

    def write_changed(*args, **kwargs):  # a shard's new folder written, the root not yet swapped
        meta = real_write(*args, **kwargs)
        if step == "after_one_shard":
            os.kill(os.getpid(), signal.SIGKILL)
        return meta

    def commit(*args):  # the root swapped, the old shard folders not yet removed
        real_commit(*args)
        os.kill(os.getpid(), signal.SIGKILL)

    update.write_changed = write_changed
    if step == "after_the_commit":
        sharded_update.atomic_write_text = commit
    Index(out).upsert([Document(str(i), f"replaced text {i} about magnetic fields") for i in range(1, 30)])
""")


def test_sigkill_during_a_sharded_update_leaves_the_old_or_the_new_index(tmp_path, vaswani_subset, texts):
    out = tmp_path / "sharded"
    build_sharded_index(vaswani_subset, out, {"bm25": {}}, 3)
    old = BM25(str(out)).search(texts, 20)
    expected = tmp_path / "expected"
    build_sharded_index(vaswani_subset, expected, {"bm25": {}}, 3)
    Index(expected).upsert([Document(str(i), f"replaced text {i} about magnetic fields") for i in range(1, 30)])
    new = BM25(str(expected)).search(texts, 20)
    assert new != old
    for step, ranking in (("after_one_shard", old), ("after_the_commit", new)):
        killed = subprocess.run([sys.executable, "-c", KILL_IN_SHARDED_UPDATE, step, str(out)], capture_output=True,
                                text=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert len([p for p in out.iterdir() if p.name.startswith("shard-")]) > 3  # left-overs of the killed update
        assert BM25(str(out)).search(texts, 20) == ranking, step
        Index(out).delete(["no-such-id"])  # the next update removes what the killed one left
        # The 3 named, and the version of the one shard this delete replaced (kept until the next update).
        assert len([p for p in out.iterdir() if p.name.startswith("shard-")]) == 4


KILL_AFTER_SHARDS = textwrap.dedent("""
    import os, signal, sys
    from ragline.engine.index import sharded_build

    corpus, out = sys.argv[1], sys.argv[2]
    real_build, built = sharded_build.build_index, []

    def build_index(*args, **kwargs):
        if len(built) == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # after the first shard, at the start of the second
        built.append(real_build(*args, **kwargs))
        return built[-1]

    sharded_build.build_index = build_index
    sharded_build.build_sharded_index(corpus, out, {"bm25": {}}, 3)
""")


def test_a_killed_sharded_build_resumes_keeping_the_finished_shards(tmp_path, vaswani_subset, texts, caplog):
    out = tmp_path / "sharded"
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_SHARDS, str(vaswani_subset), str(out)],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists()
    with pytest.raises(InputError, match="another corpus or other settings"):
        build_sharded_index(vaswani_subset, out, {"bm25": {"threads": 1}, "dense": {}}, 3, resume=True)
    with caplog.at_level("INFO", logger="ragline.engine.index.sharded_build"):
        build_sharded_index(vaswani_subset, out, {"bm25": {}}, 3, resume=True)
    assert "shard 0 of 3 was built before the interruption" in caplog.text
    build_sharded_index(vaswani_subset, tmp_path / "clean", {"bm25": {}}, 3)
    assert BM25(str(out)).search(texts, 100) == BM25(str(tmp_path / "clean")).search(texts, 100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean", "sharded"]


def test_a_shard_that_is_not_the_one_named_is_refused(tmp_path, vaswani_subset):
    out = tmp_path / "sharded"
    build_sharded_index(vaswani_subset, out, {"bm25": {}}, 2)
    meta = json.loads((out / "meta.json").read_text())
    meta["shards"]["folders"].reverse()
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RaglineError, match="shard-01 is not shard 0 of 2"):
        BM25(str(out)).search(["magnetic"], 5)


def test_too_many_shards_for_the_corpus_is_a_clear_error_and_leaves_nothing(tmp_path, vaswani_subset):
    with pytest.raises(InputError, match="use fewer shards"):
        build_sharded_index(vaswani_subset, tmp_path / "idx", {"bm25": {}}, 2000)
    assert list(tmp_path.iterdir()) == []


def ragline(*args):
    return subprocess.run([sys.executable, "-m", "ragline.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_the_command_line_builds_and_searches_a_sharded_index(tmp_path, vaswani_subset, hybrid_index):
    built = ragline("index", vaswani_subset, "--out", tmp_path / "idx", "--shards", "2")
    assert built.returncode == 0, built.stderr
    assert "as 2 shards with bm25, dense" in built.stdout
    assert is_sharded(tmp_path / "idx")
    found = ragline("query", tmp_path / "idx", "magnetic field of the earth", "--json", "-k", "5")
    assert found.returncode == 0, found.stderr
    expected = retrieval_pipeline(str(hybrid_index), "auto", k=5).run(["magnetic field of the earth"])[0]
    assert [h["id"] for h in json.loads(found.stdout)["ranking"]] == [h.id for h in expected.ranking]
    only_bm25 = ragline("query", tmp_path / "idx", "magnetic field of the earth", "--json", "-k", "5", "--retriever", "bm25")
    assert only_bm25.returncode == 0, only_bm25.stderr
    expected = retrieval_pipeline(str(hybrid_index), "bm25", k=5).run(["magnetic field of the earth"])[0]
    assert [h["id"] for h in json.loads(only_bm25.stdout)["ranking"]] == [h.id for h in expected.ranking]
    refused = ragline("query", hybrid_index, "magnetic", "--ray", "local")
    assert refused.returncode == 2 and "is not sharded" in refused.stderr
    refused = ragline("index", vaswani_subset, "--out", tmp_path / "idx", "--update", "--shards", "3")
    assert refused.returncode == 2 and "keeps the index's shards" in refused.stderr


def test_the_service_says_when_a_shard_did_not_answer_and_refuses_when_asked(hybrid_shards, monkeypatch):
    """A shard that stays down (simulated: the shard set reports shard 1
    missing, as it does on Ray) makes every response ``partial`` with the
    shard's number; ``allow_partial: false`` turns it into a 503."""
    import time

    from fastapi.testclient import TestClient

    from ragline.engine.pipeline import Pipeline
    from ragline.retrievers.shards import ShardSet
    from ragline.serve import ServeSettings, create_app

    stage = BM25(str(hybrid_shards), k=10)
    pipelines = {"sharded": Pipeline([stage], top_k=3)}
    with TestClient(create_app(pipelines, ServeSettings(allowed_hosts=("testserver",)))) as http:
        deadline = time.monotonic() + 60
        while http.get("/healthz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        whole = http.post("/v1/search", json={"query": "magnetic field", "k": 3}).json()["results"][0]
        assert whole["partial"] is False and "missing_shards" not in whole
        real_search = ShardSet.search

        def shard_1_down(self, texts, k, query_filter=None):
            found, _ = real_search(self, texts, k, query_filter)
            return [[hit for hit in hits if hit[2] != 1] for hits in found], [1]

        monkeypatch.setattr(ShardSet, "search", shard_1_down)
        partial = http.post("/v1/search", json={"query": "magnetic field", "k": 3}).json()["results"][0]
        assert partial["partial"] is True and partial["missing_shards"] == [1]
        assert all(shard_of(hit["id"], 2) == 0 for hit in partial["hits"])
        trace = partial["timings"][0]
        assert trace["partial"] is True and trace["missing_shards"] == [1]
        refused = http.post("/v1/search", json={"query": "magnetic field", "k": 3, "allow_partial": False})
        assert refused.status_code == 503
        assert refused.json()["error"]["param"] == "allow_partial" and "shard(s) 1 of" in refused.json()["error"]["message"]
