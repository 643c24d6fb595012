"""FAISS index construction from a preset or an ``index_factory`` string,
training on a sample, adding from a memory-mapped matrix in chunks, and moving
to the GPU when faiss-gpu and a GPU are present.

Presets (vectors are unit length, the metric is inner product = cosine):
- ``flat``  exact search (``Flat``)
- ``hnsw``  graph search (``HNSW32,Flat``; efSearch set at query time)
- ``ivfpq`` inverted lists + product quantisation, sized from the corpus:
  about 4·√n lists, one 8-bit sub-quantiser per 8 dimensions (4-bit on small
  corpora, which cannot train 256 centroids per sub-space).
Anything else is passed to ``faiss.index_factory`` as is.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ragline.engine.errors import InputError, MissingDependency
from ragline.engine.optional import import_optional

log = logging.getLogger(__name__)

PRESETS = ("flat", "hnsw", "ivfpq")
_ADD_CHUNK = 65536
_TRAIN_SAMPLE = 65536
_MIN_IVFPQ = 64


def import_faiss():
    return import_optional("faiss", needed_for="dense retrieval")


def factory_string(preset: str, dim: int, count: int) -> str:
    key = preset.lower()
    if key == "flat":
        return "Flat"
    if key == "hnsw":
        return "HNSW32,Flat"
    if key == "ivfpq":
        if count < _MIN_IVFPQ:
            raise InputError(f"the ivfpq preset needs at least {_MIN_IVFPQ} passages (got {count}); use flat")
        nlist = max(1, min(int(4 * math.sqrt(count)), count // 39))
        m = next(m for m in (dim // 8, dim // 4, dim // 2, dim) if m >= 1 and dim % m == 0)
        nbits = 8 if count >= 256 * 39 else 4
        return f"IVF{nlist},PQ{m}x{nbits}"
    return preset


def build_faiss_index(vectors: np.ndarray, preset: str, seed: int = 0):
    """Build an inner-product index over ``vectors`` (may be a memmap)."""
    faiss = import_faiss()
    count, dim = vectors.shape
    factory = factory_string(preset, dim, count)
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise InputError(f"FAISS cannot build index {factory!r}: {str(err).splitlines()[0]}") from None
    if not index.is_trained:
        # A uniform sample is enough to train IVF centroids and PQ codebooks.
        rows = np.sort(np.random.default_rng(seed).choice(count, size=min(count, _TRAIN_SAMPLE), replace=False))
        index.train(np.ascontiguousarray(vectors[rows]))
    for start in range(0, count, _ADD_CHUNK):
        index.add(np.ascontiguousarray(vectors[start : start + _ADD_CHUNK]))
    return index, factory


def set_search_params(index, nprobe: int, ef_search: int) -> None:
    faiss = import_faiss()
    try:
        faiss.extract_index_ivf(index).nprobe = nprobe
    except RuntimeError:
        pass  # not an IVF index
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
        hnsw.efSearch = ef_search


def maybe_to_gpu(index, want: str = "auto"):
    """Move the index to all GPUs when asked (``yes``), or when possible (``auto``).
    HNSW has no GPU implementation and stays on the CPU."""
    faiss = import_faiss()
    if want == "no":
        return index
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus == 0 or "HNSW" in type(faiss.downcast_index(index)).__name__:
        if want == "yes":
            raise MissingDependency("gpu=yes but faiss-gpu with a visible GPU is not available")
        log.info("FAISS searches on the CPU (%s)", "HNSW has no GPU version" if gpus else "no GPU visible to FAISS")
        return index
    return faiss.index_cpu_to_all_gpus(index)


def search_within(index, vectors: np.ndarray, k: int, rows, nprobe: int, ef_search: int):
    """``index.search`` restricted to the vectors numbered ``rows``: FAISS
    skips every other vector while it searches (an id selector), so the
    result is the unfiltered ranking restricted to ``rows``, not a deep
    search filtered afterwards. HNSW's graph walk is approximate with a
    selector as without one."""
    faiss = import_faiss()
    ntotal = index.ntotal
    bitmap = np.zeros((ntotal + 7) // 8, dtype=np.uint8)  # bit i of byte i//8 (little-endian), as FAISS reads it
    chosen = np.asarray(rows, dtype=np.int64)
    np.bitwise_or.at(bitmap, chosen >> 3, (1 << (chosen & 7)).astype(np.uint8))
    selector = faiss.IDSelectorBitmap(ntotal, faiss.swig_ptr(bitmap))
    try:
        faiss.extract_index_ivf(index)
        params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
    except RuntimeError:  # not an IVF index
        if getattr(faiss.downcast_index(index), "hnsw", None) is not None:
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=ef_search)
        else:
            params = faiss.SearchParameters(sel=selector)
    scores, found = index.search(vectors, k, params=params)
    del bitmap  # (the selector points into it until the search returns)
    return scores, found
