"""A sharded index searched on Ray, one actor per shard, on a simulated
two-node cluster (a head that runs no work, two one-CPU nodes): equal to one
index; a shard actor killed under load is restarted and its searches rerun
(no wrong answer); a shard that stays down makes every answer partial and
flagged, or an error when asked. Every Ray here is started by the test, on
this machine's loopback, and shut down after."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest

# Before Ray is first imported: this process runs Lucene's JVM too (see ray_session.JVM_SAFE).
os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
ray = pytest.importorskip("ray")

from ragline.engine.index.sharded_build import build_sharded_index  # noqa: E402
from ragline.engine.index.sharding import shard_of  # noqa: E402
from ragline.engine.pipeline import Pipeline  # noqa: E402
from ragline.engine.retrieval_pipeline import retrieval_pipeline  # noqa: E402
from ragline.engine.types import Query  # noqa: E402
from ragline.retrievers.bm25 import BM25  # noqa: E402
from ragline.retrievers.dense import Dense  # noqa: E402
from ragline.retrievers.shards import ShardUnavailable  # noqa: E402

LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
BATCHES = 40  # the load: bounded in count, and each search in time (SHARD_TIMEOUT_S)


@pytest.fixture(scope="module")
def texts(vaswani_queries) -> list[str]:
    return [text for _, text in vaswani_queries]


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as patch:
        for name, value in LOOPBACK.items():
            patch.setenv(name, value)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.WARNING)
        yield cluster
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def two_shards(vaswani_subset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ray-shards") / "idx"
    build_sharded_index(vaswani_subset, out, {"bm25": {}, "dense": {}}, 2)
    return out


@pytest.mark.slow
def test_shards_on_two_nodes_equal_one_index(two_nodes, two_shards, hybrid_index, texts):
    for kind in (BM25, Dense):
        one = kind(str(hybrid_index)).search(texts, 400)
        stage = kind(str(two_shards), ray="auto")
        try:
            sharded = stage.search(texts, 400)
            nodes = ray.get([actor.node.remote() for actor in stage._shards.actors])
        finally:
            stage._shards.close()
        assert len(set(nodes)) == 2, "the two shards share a node"
        for expected, got in zip(one, sharded):
            assert [pid for pid, _ in got] == [pid for pid, _ in expected]
            assert all(abs(a - b) <= 1e-5 for (_, a), (_, b) in zip(expected, got))
    pipeline = retrieval_pipeline(str(two_shards), "hybrid", k=10, ray="auto")
    try:
        answers = pipeline.run(texts[:5])
    finally:
        for stage in pipeline.stages[:2]:
            if stage._shards is not None:
                stage._shards.close()
    expected = retrieval_pipeline(str(hybrid_index), "hybrid", k=10).run(texts[:5])
    assert [[h.id for h in q.ranking] for q in answers] == [[h.id for h in q.ranking] for q in expected]
    assert [[p.text for p in q.passages] for q in answers] == [[p.text for p in q.passages] for q in expected]


@pytest.mark.slow
def test_a_killed_shard_is_restarted_and_a_shard_that_stays_down_is_flagged(two_nodes, two_shards, hybrid_index, texts):
    """Searches run in a loop (bounded) while shard 0's actor is killed: Ray
    restarts it, its unfinished searches rerun, and every answer equals one
    index's. Then shard 1 is killed for good: every answer is flagged partial
    and holds exactly the whole ranking's passages of shard 0."""
    whole = {q: found for q, found in zip(texts, BM25(str(hybrid_index)).search(texts, 50))}
    stage = BM25(str(two_shards), k=50, ray="auto")
    pipeline = Pipeline([stage], top_k=0)  # it moves the stage's notes (missing shards) into each query's trace
    stage.warm_up()
    answers: list[list[Query]] = []
    batches = [texts[i % 9 * 10:i % 9 * 10 + 10] for i in range(BATCHES)]

    def load():
        deadline = time.monotonic() + 600
        for batch in batches:
            if time.monotonic() > deadline:
                break
            answers.append(pipeline.run([Query(str(n), text) for n, text in enumerate(batch)]))

    try:
        loader = threading.Thread(target=load)
        loader.start()
        while len(answers) < 3 and loader.is_alive():
            time.sleep(0.05)
        ray.kill(stage._shards.actors[0], no_restart=False)  # under load: Ray restarts it
        loader.join(timeout=900)
        assert not loader.is_alive()
        assert len(answers) == BATCHES
        wrong = [q.text for batch in answers for q in batch
                 if [(h.id, h.score) for h in q.ranking] != whole[q.text] or q.missing_shards()]
        assert wrong == []

        ray.kill(stage._shards.actors[1], no_restart=True)
        partial = pipeline.run([Query(str(n), text) for n, text in enumerate(texts[:10])])
        for query in partial:
            assert query.missing_shards() == [1]
            assert query.to_dict()["partial"] is True and query.to_dict()["missing_shards"] == [1]
            expected = [pid for pid, _ in whole[query.text] if shard_of(pid, 2) == 0]
            got = [h.id for h in query.ranking]
            assert got[:len(expected)] == expected
            assert all(shard_of(pid, 2) == 0 for pid in got)
    finally:
        stage._shards.close()

    strict = BM25(str(two_shards), k=10, ray="auto", missing_shards="fail")
    try:
        strict.warm_up()
        ray.kill(strict._shards.actors[1], no_restart=True)
        with pytest.raises(ShardUnavailable, match="shard 1 of 2"):
            strict.search(texts[:2], 10)
    finally:
        strict._shards.close()
