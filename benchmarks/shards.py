"""Sharded search against one index, on all of Vaswani (11,429 documents, 93 queries).

1. Equality: BM25 and flat dense over 3 shards vs one index, every query at
   k = 1000 — in process, and over a local Ray (one actor per shard): lists
   whose ids differ, and the largest score difference.
2. Latency at k = 10, one query at a time, every query, the single index and
   the sharded one side by side (alternating query by query): 2 shards on a
   local Ray (the goal: ≤ 1.5× the single index's), and in process.
3. Faults on a simulated two-node cluster (``ray.cluster_utils.Cluster``: a
   head that runs no work, two one-CPU nodes), 2 BM25 shards: 40 batches of
   10 queries while shard 0's actor is killed (Ray restarts it), then shard 1
   killed for good and 10 more batches: answers that differ from one index's
   (or from its shard-0 passages, when partial), and partial answers not flagged.

    python benchmarks/shards.py [--skip-faults]

Indexes are kept under .cache/shards-bench (built once). Prints each phase
as it ends, with the load average, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")  # this process runs Lucene's JVM too

ROOT = Path(__file__).resolve().parents[1]
VASWANI = ROOT.parent / "shared" / "data" / "vaswani"
CACHE = ROOT / ".cache" / "shards-bench"
COMPONENTS = {"bm25": {}, "dense": {}}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message} (load {os.getloadavg()[0]:.2f})", flush=True)


def indexes() -> dict[str, Path]:
    from ragline.engine.index.build import build_index
    from ragline.engine.index.sharded_build import build_sharded_index

    paths = {"one": CACHE / "one", "3": CACHE / "three-shards", "2": CACHE / "two-shards"}
    corpus = VASWANI / "doc-text.trec"
    if not (paths["one"] / "meta.json").exists():
        log("building one index (BM25 + flat dense)")
        build_index(corpus, paths["one"], COMPONENTS, progress=True)
    for shards in ("3", "2"):
        if not (paths[shards] / "meta.json").exists():
            log(f"building {shards} shards (BM25 + flat dense)")
            build_sharded_index(corpus, paths[shards], COMPONENTS, int(shards), progress=True)
    return paths


def compare(one: list, sharded: list) -> dict:
    """Lists whose ids differ; the largest score difference rank by rank; and,
    where ids differ, how far apart one index scored the two passages that
    swapped places (a near-tie when tiny) and how many passages are in one
    top k but not the other."""
    differing = [(a, b) for a, b in zip(one, sharded) if [pid for pid, _ in a] != [pid for pid, _ in b]]
    largest = max((abs(x - y) for a, b in zip(one, sharded) for (_, x), (_, y) in zip(a, b)), default=0.0)
    gaps, outside = [], 0
    for a, b in differing:
        scores = dict(a)
        outside += len(set(scores) - {pid for pid, _ in b})
        gaps += [abs(x - scores[q]) for (p, x), (q, _) in zip(a, b) if p != q and q in scores]
    return {"lists_with_other_ids": len(differing), "max_score_difference": largest,
            "max_score_gap_of_swapped_passages": max(gaps, default=0.0), "passages_in_one_top_k_only": outside,
            "hits": sum(map(len, sharded)), "hits_one_index": sum(map(len, one))}


def equality(paths, texts, ray_address) -> dict:
    from ragline.retrievers.bm25 import BM25
    from ragline.retrievers.dense import Dense

    figures = {}
    for kind in (BM25, Dense):
        one = kind(str(paths["one"])).search(texts, 1000)
        for where, address in (("in process", None), ("ray", ray_address)):
            stage = kind(str(paths["3"]), ray=address)
            try:
                figures[f"{kind.name} {where}"] = compare(one, stage.search(texts, 1000))
            finally:
                if stage._shards is not None:
                    stage._shards.close()
            log(f"equality, {kind.name}, 3 shards {where}: {figures[f'{kind.name} {where}']}")
    return figures


def latency(paths, texts, ray_address, repeats: int) -> dict:
    """Median and 95th percentile seconds per query at k = 10, side by side."""
    from ragline.retrievers.bm25 import BM25
    from ragline.retrievers.dense import Dense

    figures = {}
    for kind in (BM25, Dense):
        stages = {"one index": kind(str(paths["one"]), k=10), "2 shards in process": kind(str(paths["2"]), k=10),
                  "2 shards on ray": kind(str(paths["2"]), k=10, ray=ray_address)}
        for stage in stages.values():
            stage.warm_up()
            stage.search(texts[:5], 10)  # warm: JIT, caches
        times = {name: [] for name in stages}
        for _ in range(repeats):
            for text in texts:
                for name, stage in stages.items():
                    start = time.perf_counter()
                    stage.search([text], 10)
                    times[name].append(time.perf_counter() - start)
        for name, values in times.items():
            values.sort()
            figures[f"{kind.name} {name} median ms"] = round(1000 * statistics.median(values), 2)
            figures[f"{kind.name} {name} p95 ms"] = round(1000 * values[int(0.95 * (len(values) - 1))], 2)
        for name in ("2 shards in process", "2 shards on ray"):
            figures[f"{kind.name} {name} / one index (median)"] = round(
                figures[f"{kind.name} {name} median ms"] / figures[f"{kind.name} one index median ms"], 2)
        if kind is BM25:  # what one call to a shard actor costs here, doing nothing
            import ray

            actor = stages["2 shards on ray"]._shards.actors[0]
            round_trips = []
            for _ in range(200):
                start = time.perf_counter()
                ray.get(actor.node.remote())
                round_trips.append(time.perf_counter() - start)
            figures["ray actor round trip median ms"] = round(1000 * statistics.median(round_trips), 2)
        for stage in stages.values():
            if stage._shards is not None:
                stage._shards.close()
        log(f"latency, {kind.name}: " + ", ".join(f"{k.split(' ', 1)[1]} {v}" for k, v in figures.items()
                                                   if k.startswith(kind.name)))
    return figures


def faults(paths, texts) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from ragline.engine.index.sharding import shard_of
    from ragline.engine.pipeline import Pipeline
    from ragline.engine.types import Query
    from ragline.retrievers.bm25 import BM25

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.WARNING)
    try:
        whole = dict(zip(texts, BM25(str(paths["one"])).search(texts, 50)))
        stage = BM25(str(paths["2"]), k=50, ray="auto")
        pipeline = Pipeline([stage], top_k=0)
        stage.warm_up()
        nodes = len(set(ray.get([actor.node.remote() for actor in stage._shards.actors])))
        batches = [texts[i % 9 * 10:i % 9 * 10 + 10] for i in range(40)]
        answers, started = [], time.perf_counter()

        def load():
            for batch in batches:
                answers.append(pipeline.run([Query(str(n), t) for n, t in enumerate(batch)]))

        loader = threading.Thread(target=load)
        loader.start()
        while len(answers) < 3 and loader.is_alive():
            time.sleep(0.05)
        ray.kill(stage._shards.actors[0], no_restart=False)
        killed_at = time.perf_counter()
        loader.join(timeout=900)
        load_seconds = time.perf_counter() - started
        restarted = [q for batch in answers for q in batch]
        wrong = sum([(h.id, h.score) for h in q.ranking] != whole[q.text] or bool(q.missing_shards()) for q in restarted)

        ray.kill(stage._shards.actors[1], no_restart=True)
        partial = [q for batch in batches[:10] for q in pipeline.run([Query(str(n), t) for n, t in enumerate(batch)])]
        unflagged = sum(q.missing_shards() != [1] for q in partial)
        wrong_partial = sum([h.id for h in q.ranking][:len(kept)] != kept or any(shard_of(h.id, 2) != 0 for h in q.ranking)
                            for q in partial for kept in [[pid for pid, _ in whole[q.text] if shard_of(pid, 2) == 0]])
        stage._shards.close()
    finally:
        ray.shutdown()
        cluster.shutdown()
    figures = {"nodes_used_by_2_shards": nodes, "answers_while_a_shard_was_killed": len(restarted),
               "wrong_answers": wrong, "seconds_of_that_load": round(load_seconds, 1),
               "killed_after_seconds": round(killed_at - started, 1),
               "answers_with_a_shard_down": len(partial), "partial_answers_not_flagged": unflagged,
               "partial_answers_wrong": wrong_partial}
    log(f"faults: {figures}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="passes over the 93 queries for latency")
    parser.add_argument("--skip-faults", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from ragline.engine.data.topics import read_topics

    texts = [text for _, text in read_topics(VASWANI / "query-text.trec")]
    figures: dict = {"queries": len(texts), "load_average_at_start": round(os.getloadavg()[0], 2)}
    paths = indexes()

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        figures["equality (3 shards, k=1000)"] = equality(paths, texts, "auto")
        figures["latency (k=10)"] = latency(paths, texts, "auto", args.repeats)
    finally:
        ray.shutdown()
    if not args.skip_faults:
        figures["faults (2 nodes)"] = faults(paths, texts)
    figures["load_average_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
