"""Building an index with Ray (``build_index(..., ray=...)``, ``ragline index --ray``):
the encoding runs on a Ray Data actor pool; everything else is the
single-process build.

    corpus ──read on the driver's node (ray_corpus.py)──► blocks of passages
      ──map_batches(EncodePassages, actor pool)──► + vectors, in corpus order
      ──driver: build.py's _feed──► document store, BM25 (Lucene, multi-threaded),
                                    dense builder given the vectors (no encoding)

The driver consumes the encoded passages in corpus order (Ray Data keeps the
order; the row numbers are checked), in the build's own batches, and feeds
them to the components through the builder protocol as a build without Ray
does: the staging folder, the batch-by-batch commits, the atomic rename and
resuming after a kill all stay as they are. A component that encodes passages
says how (``builder.encoder_settings()``) and takes the vectors
(``builder.add(passages, vectors=...)``); the dense builder then writes them
to its embeddings file and builds FAISS from it as always (flat: the whole
matrix; IVF, IVF-PQ: trained on a sample, then every vector added in chunks).
The index is the one a single-process build writes; meta.json does not say
Ray made it, as it says nothing else about how a build ran (threads,
devices): what it records decides what the index holds, and Ray changes none
of it.

An actor that dies is restarted by Ray and its batch retried (``FAULT_TOLERANCE``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from ragline.engine.errors import RaglineError
from ragline.engine.scale.encode_actor import EncodePassages, vectors_column
from ragline.engine.scale.ray_session import (
    FAULT_TOLERANCE,
    actor_resources,
    cluster_gpus,
    data_job,
    default_workers,
    ray_session,
    readable_errors,
)

log = logging.getLogger(__name__)

# Passages per actor call: few enough to spread a corpus over the pool and
# keep every actor busy, enough that Ray's cost per call (milliseconds) stays
# small next to encoding them, which is far quicker on a GPU.
BLOCK_ROWS = {"cpu": 256, "gpu": 2048}


@contextlib.contextmanager
def ray_batches(read, hashes: list, encoders: dict[str, dict[str, Any]], skip: int, batch_size: int, address: str,
                workers: int | None) -> Iterator[Iterator[tuple[list, dict[str, Any]]]]:
    """``build._batches`` on Ray: the corpus as ``read(hashes)`` gives it, past
    its first ``skip`` passages, in batches of ``batch_size`` with the vectors
    of every component in ``encoders`` (``encoding_components``); ``hashes``
    gets the documents read for each batch before it is yielded."""
    with ray_session(address) as ray, data_job(ray):
        from ragline.engine.index.ray_corpus import CorpusSource  # subclasses Ray's Datasource

        gpus = 1 if cluster_gpus(ray) and _can_use_gpu(encoders) else 0
        workers = workers or default_workers(ray, gpus)
        block_rows = BLOCK_ROWS["gpu" if gpus else "cpu"]
        log.info("encoding on Ray: %d actor(s), %s each", workers, f"{gpus} GPU" if gpus else "1 CPU")
        encoded = (ray.data.read_datasource(CorpusSource(read, skip, block_rows), num_cpus=0, override_num_blocks=1)
                   .map_batches(EncodePassages, fn_constructor_args=(encoders,), batch_size=block_rows,
                                compute=ray.data.ActorPoolStrategy(size=workers), **actor_resources(gpus),
                                **FAULT_TOLERANCE))
        with readable_errors():
            yield _driver_batches(encoded, list(encoders), batch_size, hashes, skip)


def encoding_components(builders: list) -> dict[str, dict[str, Any]]:
    """How each component that encodes passages encodes them, by name; a build
    with none (BM25 alone) has nothing for Ray to do, and runs without it."""
    encoders = {b.name: settings for b in builders if (settings := b.encoder_settings()) is not None}
    if not encoders:
        log.warning("--ray: no component encodes passages (BM25 is built on the driver anyway); building without Ray")
    return encoders


def _driver_batches(encoded, components: list[str], batch_size: int, hashes: list, first_row: int):
    from ragline.engine.index.ray_corpus import passages_from

    expected = first_row
    for batch in encoded.iter_batches(batch_size=batch_size, batch_format="numpy"):
        rows = batch["row"]
        if not np.array_equal(rows, np.arange(expected, expected + len(rows))):
            raise RaglineError(f"Ray returned passages out of order (rows from {int(rows[0])}, expected {expected}); "
                               "nothing was written")
        expected += len(rows)
        pairs, documents = passages_from(batch)
        hashes.extend(documents)
        yield pairs, {name: {"vectors": np.asarray(batch[vectors_column(name)], dtype=np.float32)} for name in components}


def _can_use_gpu(encoders: dict[str, dict[str, Any]]) -> bool:
    """Torch encoders not pinned to the CPU run on a GPU per actor where the cluster has GPUs."""
    return all(s["backend"] == "torch" and (s["device"] or "cuda").startswith("cuda") for s in encoders.values())
