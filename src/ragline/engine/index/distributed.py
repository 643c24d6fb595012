"""Building an index with Ray (``build_index(..., ray=...)``, ``ragline index --ray``):
the encoding runs on a Ray actor pool; everything else is the single-process
build.

    corpus ──read on the driver──► blocks of passages
      ──their texts to the actor pool (engine/scale/actor_pool.py)──► vectors, in corpus order
      ──driver: build.py's _feed──► document store, BM25 (Lucene, multi-threaded),
                                    dense builder given the vectors (no encoding)

The driver reads the corpus with the very function a single-process build
reads it with (``build.corpus_passages``: the same readers, chunking and
document hashes), so ids, order and errors are those of a build without Ray;
only the texts travel to the actors, and only vectors come back. The driver
feeds the encoded passages in corpus order, in the build's own batches, to
the components through the builder protocol as a build without Ray does: the
staging folder, the batch-by-batch commits, the atomic rename and resuming
after a kill all stay as they are. A component that encodes passages says how
(``builder.encoder_settings()``) and takes the vectors (``builder.add(passages,
vectors=...)``); the dense builder then writes them to its embeddings file and
builds FAISS from it as always (flat: the whole matrix; IVF, IVF-PQ: trained
on a sample, then every vector added in chunks). The index is the one a
single-process build writes; meta.json does not say Ray made it, as it says
nothing else about how a build ran (threads, devices): what it records decides
what the index holds, and Ray changes none of it.

An actor that dies is restarted by Ray and its block encoded again (``FAULT_TOLERANCE``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ragline.engine.scale.actor_pool import actor_pool, ordered_map
from ragline.engine.scale.encode_actor import EncodePassages
from ragline.engine.scale.ray_session import (
    actor_resources,
    cluster_gpus,
    default_workers,
    ray_session,
    readable_errors,
)
from ragline.engine.types import Passage

log = logging.getLogger(__name__)

# Passages per actor call: few enough to spread a corpus over the pool and
# keep every actor busy, enough that Ray's cost per call (milliseconds) stays
# small next to encoding them, which is far quicker on a GPU.
BLOCK_ROWS = {"cpu": 256, "gpu": 2048}

# (passage, origin) pairs of a corpus, noting each document's (id, hash, origin) in the list it is given
PassageReader = Callable[[list], Iterator[tuple[Passage, str]]]


@dataclass
class Block:
    """Passages read in a row, each with the documents first read for it (a
    document is committed with its first passage, as without Ray)."""

    pairs: list[tuple[Passage, str]]
    documents: list[list[tuple[str, str, str]]]

    def texts(self) -> list[str]:
        return [passage.indexed_text() for passage, _ in self.pairs]


@contextlib.contextmanager
def ray_batches(read: PassageReader, hashes: list, encoders: dict[str, dict[str, Any]], skip: int, batch_size: int,
                address: str, workers: int | None) -> Iterator[Iterator[tuple[list, dict[str, Any]]]]:
    """``build._batches`` on Ray: the corpus as ``read`` gives it, past its
    first ``skip`` passages, in batches of ``batch_size`` with the vectors of
    every component in ``encoders`` (``encoding_components``); ``hashes`` gets
    the documents first read for each batch's passages before it is yielded
    (the reader runs ahead of the batches being fed)."""
    with ray_session(address) as ray:
        gpus = 1 if cluster_gpus(ray) and _can_use_gpu(encoders) else 0
        workers = workers or default_workers(ray, gpus)
        block_rows = BLOCK_ROWS["gpu" if gpus else "cpu"]
        log.info("encoding on Ray: %d actor(s), %s each", workers, f"{gpus} GPU" if gpus else "1 CPU")
        with actor_pool(ray, EncodePassages, (encoders,), workers, actor_resources(gpus)) as actors, readable_errors():
            encoded = ordered_map(ray, actors, "encode", blocks(read, skip, block_rows), send=Block.texts)
            yield _rebatched(encoded, batch_size, hashes)


def blocks(read: PassageReader, skip: int, block_rows: int) -> Iterator[Block]:
    """The corpus past its first ``skip`` passages, ``block_rows`` at a time."""
    read_documents: list[tuple[str, str, str]] = []
    passages = read(read_documents)
    for _ in itertools.islice(passages, skip):
        pass
    read_documents.clear()  # documents recorded by the build that is resumed
    while True:
        block = Block([], [])
        for pair in itertools.islice(passages, block_rows):
            # Pulling a passage reads its document when it is its first passage.
            block.pairs.append(pair)
            block.documents.append(read_documents[:])
            read_documents.clear()
        if not block.pairs:
            return
        yield block


def _rebatched(encoded: Iterator[tuple[Block, dict[str, np.ndarray]]], batch_size: int, hashes: list):
    """The encoded blocks cut into the build's batches of ``batch_size``."""
    pairs: list = []
    documents: list = []
    vectors: dict[str, list[np.ndarray]] = {}
    for block, block_vectors in encoded:
        pairs += block.pairs
        documents += block.documents
        for name, matrix in block_vectors.items():
            vectors.setdefault(name, []).append(matrix)
        while len(pairs) >= batch_size:
            yield _batch(pairs, documents, vectors, batch_size, hashes)
    while pairs:
        yield _batch(pairs, documents, vectors, batch_size, hashes)


def _batch(pairs: list, documents: list, vectors: dict[str, list[np.ndarray]], size: int, hashes: list):
    """The first ``size`` passages, taken out of ``pairs``, ``documents`` and ``vectors``."""
    batch = pairs[:size]
    del pairs[:size]
    for read in documents[:size]:
        hashes.extend(read)
    del documents[:size]
    computed = {}
    for name, parts in vectors.items():
        matrix = np.concatenate(parts) if len(parts) > 1 else parts[0]
        computed[name] = {"vectors": np.ascontiguousarray(matrix[:len(batch)], dtype=np.float32)}
        parts[:] = [matrix[len(batch):]]
    return batch, computed


def encoding_components(builders: list) -> dict[str, dict[str, Any]]:
    """How each component that encodes passages encodes them, by name; a build
    with none (BM25 alone) has nothing for Ray to do, and runs without it."""
    encoders = {b.name: settings for b in builders if (settings := b.encoder_settings()) is not None}
    if not encoders:
        log.warning("--ray: no component encodes passages (BM25 is built on the driver anyway); building without Ray")
    return encoders


def _can_use_gpu(encoders: dict[str, dict[str, Any]]) -> bool:
    """Torch encoders not pinned to the CPU run on a GPU per actor where the cluster has GPUs."""
    return all(s["backend"] == "torch" and (s["device"] or "cuda").startswith("cuda") for s in encoders.values())
