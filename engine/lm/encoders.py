"""Loading sentence encoders (a local folder, a hub id, or a packaged copy:
``packaged.py``), once per (model, device) per process, and encoding texts."""

from __future__ import annotations

import numpy as np

from ragline.engine.errors import MissingDependency, RaglineError
from ragline.engine.lm import model_cache
from ragline.engine.lm.packaged import canonical_model_id, resolve_model_source

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


def load_sentence_encoder(name: str, device: str | None = None):
    """A SentenceTransformer, shared with every caller asking for the same one."""
    device = device or model_cache.default_device()
    key = ("sentence_encoder", canonical_model_id(name), device)
    return model_cache.shared(key, lambda: _load(name, device))


def _load(name: str, device: str):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:  # pragma: no cover - a base dependency
        raise MissingDependency("dense retrieval needs sentence-transformers") from err
    source = resolve_model_source(name)
    try:
        return SentenceTransformer(source, device=device)
    except OSError as err:
        raise RaglineError(
            f"cannot load encoder {name!r}: not a local folder, no packaged copy is installed, "
            f"and the hub did not provide it ({err.__class__.__name__}: {err})"
        ) from None


def encode_texts(model, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text."""
    vectors = model.encode(
        texts,
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)
