"""Dense retrieval: a sentence-transformers encoder and a FAISS index.

Building streams embeddings to a float32 file (``embeddings.f32``), so the
corpus never has to fit in memory, then builds the FAISS index from a memory
map of it. The folder records its settings in ``meta.json``; a query with
another encoder than the one recorded is refused.

An update (engine/index/update.py) copies the stored embeddings of unchanged
passages from the previous index and encodes only new and changed ones; the
FAISS index is then built from the assembled matrix, as a rebuild would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ragline.engine.errors import EncoderMismatch, RaglineError
from ragline.engine.index.component import IndexBuilder, IndexComponent
from ragline.engine.index.docstore import Selection
from ragline.engine.index.layout import IndexDir, read_consistently
from ragline.engine.lm.encoders import (
    DEFAULT_ENCODER,
    check_backend,
    encode_texts,
    encoder_fingerprint,
    load_sentence_encoder,
)
from ragline.engine.lm.packaged import canonical_model_id
from ragline.engine.settings import PositiveInt
from ragline.engine.types import Passage
from ragline.retrievers.base import Retriever
from ragline.retrievers.faiss_index import (
    build_faiss_index,
    import_faiss,
    maybe_to_gpu,
    search_within,
    set_search_params,
)

FORMAT_VERSION = 1
EMBEDDINGS = "embeddings.f32"
FAISS_FILE = "faiss.index"


class DenseIndexBuilder(IndexBuilder):
    name = "dense"
    can_reuse = True
    can_resume = True

    def __init__(self, encoder: str = DEFAULT_ENCODER, factory: str = "flat", batch_size: int = 64, device: str | None = None,
                 backend: str = "torch"):
        self.encoder = DEFAULT_ENCODER if encoder == "default" else encoder
        self.factory = factory
        self.batch_size = batch_size
        self.device = device
        self.backend = check_backend(backend)  # what runs the encoder: torch, onnx or onnx-int8
        self._dir: Path | None = None
        self._file = None
        self._model = None
        self._count = 0
        self._previous: np.ndarray | None = None
        self.encoded = 0  # passages encoded (not copied from a previous index)

    @classmethod
    def canonical_settings(cls, settings: dict[str, Any]) -> dict[str, Any]:
        encoder = DEFAULT_ENCODER if settings["encoder"] == "default" else settings["encoder"]
        return {**settings, "encoder": canonical_model_id(encoder)}

    @staticmethod
    def settings_from_meta(recorded: dict[str, Any]) -> dict[str, Any]:
        return {"encoder": recorded["encoder"], "factory": recorded.get("preset", recorded["factory"]),
                "backend": recorded.get("encoder_backend", "torch")}

    def open(self, directory: Path) -> None:
        import_faiss()  # fail before encoding anything
        directory.mkdir(parents=True)
        self._dir = directory
        self._model = load_sentence_encoder(self.encoder, self.device, self.backend)
        self._file = open(directory / EMBEDDINGS, "wb")

    def resume(self, directory: Path, committed: int) -> None:
        """Continue in ``directory`` as a killed build left it: its embeddings
        file holds at least the first ``committed`` passages' rows (``add``
        syncs each batch before the build commits it); rows past them, of a
        batch never committed, are dropped. Only the rest get encoded."""
        import_faiss()
        self._dir = directory
        self._model = load_sentence_encoder(self.encoder, self.device, self.backend)
        row_bytes = self._model.get_embedding_dimension() * np.dtype(np.float32).itemsize
        path = directory / EMBEDDINGS
        held = path.stat().st_size // row_bytes if path.is_file() else 0
        if held < committed:
            raise RaglineError(f"cannot resume: {path} holds {held} embeddings, the build committed {committed} "
                               "passages; build without --resume to start over")
        self._file = open(path, "r+b")
        self._file.truncate(committed * row_bytes)
        self._file.seek(0, os.SEEK_END)
        self._count = committed

    def reuse(self, previous: Path) -> None:
        """Take the embeddings of unchanged passages from the dense folder
        ``previous``, after checking they come from this very encoder."""
        meta = json.loads((previous / "meta.json").read_text(encoding="utf-8"))
        recorded, current = meta.get("encoder_fingerprint"), encoder_fingerprint(self.encoder)
        same_encoder = canonical_model_id(self.encoder) == meta["encoder"] and (recorded is None or recorded == current)
        if not same_encoder or meta["dim"] != self._model.get_embedding_dimension():
            raise EncoderMismatch(f"the encoder {meta['encoder']!r} has changed since the index at {previous.parent} "
                                  "was built; its embeddings cannot be reused: rebuild the index")
        self._previous = np.memmap(previous / EMBEDDINGS, dtype=np.float32, mode="r", shape=(meta["count"], meta["dim"]))

    def encoder_settings(self) -> dict[str, Any]:
        """How ``add`` encodes passages (``load_sentence_encoder``'s arguments
        and the batch size), for encoding them elsewhere the same way: a Ray
        actor pool (engine/index/distributed.py), which hands ``add`` the vectors."""
        return {"encoder": self.encoder, "device": self.device, "backend": self.backend, "batch_size": self.batch_size}

    def add(self, passages: list[Passage], previous_rows: list[int | None] | None = None,
            vectors: np.ndarray | None = None) -> None:
        """``vectors``: the passages' embeddings, encoded elsewhere as
        ``encoder_settings()`` says; written as they are, nothing is encoded here."""
        if vectors is not None:
            dim = self._model.get_embedding_dimension()
            if vectors.shape != (len(passages), dim):
                raise RaglineError(f"got {vectors.shape[0]}x{vectors.shape[1]} vectors for {len(passages)} passages "
                                   f"of dimension {dim}")
            self._write(vectors.astype(np.float32, copy=False), encoded=len(passages))
            return
        if previous_rows is None:
            previous_rows = [None] * len(passages)
        fresh = [i for i, row in enumerate(previous_rows) if row is None]
        vectors = np.empty((len(passages), self._model.get_embedding_dimension()), dtype=np.float32)
        kept = [i for i, row in enumerate(previous_rows) if row is not None]
        if kept:
            vectors[kept] = self._previous[[previous_rows[i] for i in kept]]
        if fresh:
            vectors[fresh] = encode_texts(self._model, [passages[i].indexed_text() for i in fresh], self.batch_size)
        self._write(vectors, encoded=len(fresh))

    def _write(self, vectors: np.ndarray, encoded: int) -> None:
        self._file.write(np.ascontiguousarray(vectors).tobytes())
        # On disk before the build commits the batch, so a resumed build finds it.
        self._file.flush()
        os.fsync(self._file.fileno())
        self._count += len(vectors)
        self.encoded += encoded

    def close(self) -> dict[str, Any]:
        self._file.close()
        self._previous = None
        dim = self._model.get_embedding_dimension()
        vectors = np.memmap(self._dir / EMBEDDINGS, dtype=np.float32, mode="r", shape=(self._count, dim))
        index, factory = build_faiss_index(vectors, self.factory)
        import_faiss().write_index(index, str(self._dir / FAISS_FILE))
        meta = {
            "format_version": FORMAT_VERSION,
            "encoder": canonical_model_id(self.encoder),
            "encoder_fingerprint": encoder_fingerprint(self.encoder),
            "dim": dim,
            "metric": "inner_product",
            "normalized": True,
            "count": self._count,
            "factory": factory,
            "preset": self.factory,
            "max_seq_length": self._model.max_seq_length,
            "encoder_backend": self.backend,
        }
        (self._dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return meta

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
        self._previous = None


class Dense(Retriever):
    """Retrieve the top ``k`` passages of every query by embedding similarity.

    ``encoder`` and ``backend`` (torch, onnx, onnx-int8) default to those the
    index was built with; naming others is an error. ``nprobe`` (IVF) and ``ef_search`` (HNSW) trade speed for recall;
    ``gpu`` is ``auto``, ``yes`` or ``no``. ``filter``: a metadata filter
    (``"year>=2020 and lang=en"``, or a list that must all hold).

    On a sharded index every shard returns its top ``k`` and the lists are
    merged by score (exact for flat indexes; per shard for IVF and HNSW, as
    FAISS's own sharding); ``ray`` and ``missing_shards`` as for BM25.
    """

    name = "dense"

    def __init__(self, index: str, k: PositiveInt = 100, encoder: str | None = None, batch_size: PositiveInt = 64,
                 device: str | None = None, nprobe: PositiveInt = 16, ef_search: PositiveInt = 128,
                 gpu: Literal["auto", "yes", "no"] = "auto",
                 filter: str | list[str] | None = None, backend: str | None = None, ray: str | None = None,
                 missing_shards: Literal["flag", "fail"] = "flag"):
        self.index = str(index)
        self.k = k
        self.encoder = encoder
        self.batch_size = batch_size
        self.device = device
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.gpu = gpu
        self.filter = filter
        self.set_filter(filter)
        self.backend = backend if backend is None else check_backend(backend)
        self.ray = ray
        self.missing_shards = missing_shards
        self._faiss_index = None
        self._ids: list[str] = []
        self._model = None

    def warm_up(self) -> None:
        if self.open_shards():
            return
        meta, faiss_index, self._store, self._ids = read_consistently(self.index, self._open)
        set_search_params(faiss_index, self.nprobe, self.ef_search)
        self._cpu_index = faiss_index  # filtered searches run here: FAISS's GPU indexes take no id selector
        self._faiss_index = maybe_to_gpu(faiss_index, self.gpu)
        recorded = meta.get("encoder_fingerprint")  # absent in indexes built before it was recorded
        if recorded is not None and encoder_fingerprint(meta["encoder"]) not in (recorded, None):
            raise EncoderMismatch(
                f"the encoder {meta['encoder']!r} has changed since index {self.index} was built "
                "(its configuration, tokenizer or weights differ); rebuild the index, or restore the encoder"
            )
        self._model = load_sentence_encoder(meta["encoder"], self.device, meta.get("encoder_backend", "torch"))
        if self._model.get_embedding_dimension() != meta["dim"]:
            raise EncoderMismatch(f"encoder {meta['encoder']!r} now gives {self._model.get_embedding_dimension()} dimensions, the index has {meta['dim']}")

    def _open(self, index: IndexDir):
        """The index's dense settings, FAISS index, store and passage ids, all of one version."""
        path, meta = index.component("dense")
        if self.encoder is not None and canonical_model_id(self.encoder) != meta["encoder"]:
            raise EncoderMismatch(
                f"index {self.index} was built with encoder {meta['encoder']!r}, "
                f"not {canonical_model_id(self.encoder)!r}; query it with the same encoder or rebuild it"
            )
        built_with = meta.get("encoder_backend", "torch")  # indexes from before backends were torch
        if self.backend is not None and self.backend != built_with:
            raise EncoderMismatch(f"index {self.index} was built with encoder backend {built_with!r}, not {self.backend!r}; "
                                  "query it with the same backend (or leave backend unset) or rebuild it")
        faiss_index = import_faiss().read_index(str(path / FAISS_FILE))
        store = index.docstore()
        ids = store.ids_in_row_order()
        if len(ids) != faiss_index.ntotal:
            raise RaglineError(f"index {self.index} is inconsistent: {faiss_index.ntotal} vectors, {len(ids)} passages")
        return meta, faiss_index, store, ids

    def encode(self, texts: list[str]) -> np.ndarray:
        self.warm_up()
        if self._shards is not None:
            raise RaglineError("a sharded index's shards encode their own queries; search it with texts")
        return encode_texts(self._model, texts, self.batch_size)

    def search_vectors(self, vectors: np.ndarray, k: int | None = None,
                       allowed: Selection | None = None) -> list[list[tuple[str, float]]]:
        self.warm_up()
        if self._shards is not None:
            raise RaglineError("a sharded index's shards encode their own queries; search it with texts")
        if allowed is None:
            scores, rows = self._faiss_index.search(vectors, k or self.k)
        elif not allowed.rows:
            return [[] for _ in range(len(vectors))]
        else:
            scores, rows = search_within(self._cpu_index, vectors, k or self.k, allowed.rows, self.nprobe, self.ef_search)
        ids = self._ids
        # FAISS pads with row -1 when fewer than k vectors qualify. Equal
        # scores are ordered by id (FAISS leaves their order to its heap), so
        # that one index and its shards rank ties alike.
        return [
            sorted(((ids[row], score) for row, score in zip(row_list, score_list) if row >= 0), key=_best_then_id)
            for row_list, score_list in zip(rows.tolist(), scores.tolist())
        ]

    @classmethod
    def merge_shard_lists(cls, lists, k):
        """By score, equal scores by id: what one index gives."""
        return sorted((hit for found in lists for hit in found), key=_best_then_id)[:k]

    def search(self, texts: list[str], k: int | None = None,
               allowed: Selection | None = None) -> list[list[tuple[str, float]]]:
        self.warm_up()
        if self._shards is not None:
            return self.search_shards(texts, k, allowed)
        return self.search_vectors(self.encode(texts), k, allowed)


def _best_then_id(hit: tuple) -> tuple[float, str]:
    return -hit[1], hit[0]


DENSE_INDEX = IndexComponent(DenseIndexBuilder, Dense)
