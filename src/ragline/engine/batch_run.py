"""Running a pipeline over many queries on a Ray actor pool (``ragline run
--ray``, ``ragline eval beir --ray``): the pipeline's own batches mapped over
the pool (engine/scale/actor_pool.py), each actor building the pipeline from
its configuration and warming it once (its indexes opened for reading, its
models loaded), then running every batch it is given.

Each call is one pipeline batch (``Pipeline.batch_size`` queries, cut as
``Pipeline.run`` cuts them), so every stage sees the batches it sees in one
process, and the results come back in query order, equal to a single-process
run apart from the timings in their traces.

A hit holds its document store (an open SQLite file) to fetch its text: it
travels as the store's path and is opened again here, once per path; a
store held in memory (``MemoryStore``) travels whole.

GPUs: every actor gets one where the cluster has them; a ``generate`` stage
on the vllm backend runs one vLLM engine per actor (its
``tensor_parallel_size`` GPUs each, or vLLM's CPU build on a cluster without
GPUs), through the same backend as in one process
(generators/vllm_backend.py). Stages are rebuilt on the actors by name, so
they must be installed there (entry points), not registered from code.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ragline.engine.index.docstore import DocStore
from ragline.engine.pipeline import Pipeline
from ragline.engine.registry import STAGES, lookup
from ragline.engine.scale.actor_pool import actor_pool, ordered_map
from ragline.engine.scale.ray_session import (
    JVM_SAFE,
    actor_resources,
    cluster_gpus,
    default_workers,
    ray_session,
    readable_errors,
)
from ragline.engine.types import Query

log = logging.getLogger(__name__)


def run_on_ray(pipeline: Pipeline, queries: Iterable[str | Query], address: str = "auto", workers: int | None = None,
               progress: bool = False) -> list[Query]:
    """``pipeline.run(queries)``, its batches spread over ``workers`` Ray actors
    (default: one per GPU, else per CPU slot, at most one per batch)."""
    items = [q if isinstance(q, Query) else Query(id=str(i), text=q) for i, q in enumerate(queries)]
    batches = [items[start: start + pipeline.batch_size] for start in range(0, len(items), pipeline.batch_size)]
    if not batches:
        return []
    config = _searching_shards_in_process(pipeline.to_config())
    with ray_session(address) as ray:
        gpus = _gpus_per_actor(pipeline, cluster_gpus(ray))
        workers = min(workers or default_workers(ray, gpus), len(batches))
        log.info("running %d queries in %d batches on %d Ray actor(s)", len(items), len(batches), workers)
        # JVM_SAFE: actors may run BM25 on a cluster's nodes.
        with actor_pool(ray, RunPipeline, (config, os.getcwd()), workers, actor_resources(gpus), env=JVM_SAFE) as actors, \
                readable_errors():
            done = ordered_map(ray, actors, "run", batches, send=pickle.dumps)
            return list(_in_order(done, len(items), progress))


def _searching_shards_in_process(config: dict) -> dict:
    """The pipeline's configuration with no retriever searching a sharded index
    on shard actors of its own: each actor of the pool searches the shards in
    process (N shard actors per pool actor would compete for the same slots)."""
    for stage in config.get("stages", []):
        for settings in stage.values():
            if isinstance(settings, dict):
                settings.pop("ray", None)
    return config


class OnRay:
    """A pipeline whose ``run`` spreads its batches over a Ray actor pool
    (``run_on_ray``); anything else (``stages``, ``to_config``, ...) is the
    pipeline's own. For code that takes a pipeline, e.g. ``evaluate_beir``."""

    def __init__(self, pipeline: Pipeline, address: str = "auto", workers: int | None = None, progress: bool = False):
        self.pipeline = pipeline
        self.address = address
        self.workers = workers
        self.progress = progress

    def run(self, queries: Iterable[str | Query]) -> list[Query]:
        return run_on_ray(self.pipeline, queries, self.address, self.workers, self.progress)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipeline, name)


class RunPipeline:
    """The actor class: one per actor, each with its own warm pipeline."""

    def __init__(self, config: dict[str, Any], driver_cwd: str):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        # Relative paths in the pipeline (``index: idx``) mean what they mean
        # on the driver: on a cluster, indexes live on a file system every node
        # sees at the same path.
        if os.path.isdir(driver_cwd):
            os.chdir(driver_cwd)
        self.pipeline = pipeline_from_config(config)
        self.pipeline.warm_up()

    def run(self, queries: bytes) -> bytes:
        """A pickled batch of queries, run and pickled (with hits' document stores as their paths)."""
        return pickle.dumps(_stores_as_paths(self.pipeline.run(pickle.loads(queries))))


def pipeline_from_config(config: dict[str, Any]) -> Pipeline:
    """The pipeline ``Pipeline.to_config()`` describes (as ``Pipeline.load``
    builds one from YAML)."""
    stages = []
    for entry in config["stages"]:
        (name, params), = entry.items()
        stages.append(lookup(STAGES, name)(**params))
    return Pipeline(stages, **{k: v for k, v in config.items() if k != "stages"})


def _in_order(done, total: int, progress: bool) -> Iterator[Query]:
    from tqdm import tqdm

    stores: dict[str, Any] = {}
    with tqdm(total=total, desc="queries", unit="query", disable=not progress) as bar:
        for _, result in done:
            batch = _paths_as_stores(pickle.loads(result), stores)
            bar.update(len(batch))
            yield from batch


@dataclass(frozen=True)
class _StorePath:
    """A document store on its way back from an actor: its file."""

    path: str


def _hits(query: Query):
    yield from query.ranking
    for hits in query.hits.values():
        yield from hits


def _stores_as_paths(queries: Sequence[Query]) -> list[Query]:
    for query in queries:
        for hit in _hits(query):
            if isinstance(hit.store, DocStore):
                hit.store = _StorePath(str(hit.store.path))
    return list(queries)


def _paths_as_stores(queries: list[Query], stores: dict[str, Any]) -> list[Query]:
    for query in queries:
        for hit in _hits(query):
            if isinstance(hit.store, _StorePath):
                hit.store = _open_store(hit.store.path, stores)
    return queries


def _open_store(path: str, stores: dict[str, Any]):
    if path not in stores:
        try:
            stores[path] = DocStore(path)
        except OSError:
            log.warning("the document store %s that the actors read is not here; hits from it have no text", path)
            stores[path] = None
    return stores[path]


def _gpus_per_actor(pipeline: Pipeline, gpus_in_cluster: int) -> int:
    """A GPU per actor where the cluster has GPUs; a vLLM engine wants its
    ``tensor_parallel_size`` of them. Without GPUs each actor's vLLM engine
    is the CPU build's, on the actor's CPU slots."""
    vllm = [stage.to_config(with_defaults=True) for stage in pipeline.stages
            if stage.to_config(with_defaults=True).get("backend") == "vllm"]
    if vllm and gpus_in_cluster:
        return max(int((config.get("options") or {}).get("tensor_parallel_size", 1)) for config in vllm)
    return 1 if gpus_in_cluster else 0
