"""Loading sentence encoders (a local folder, a hub id, or a packaged copy:
``packaged.py``), once per (model, device, backend) per process, encoding
texts, and fingerprinting an encoder's files.

The backend runs the encoder's transformer: ``torch``, or ONNX Runtime on the
CPU in fp32 (``onnx``) or with int8 weights (``onnx-int8``), see
``onnx_encoder.py``. An index records the backend it was built with, and
queries are encoded through the same one."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np

from ragline.engine.errors import ConfigError, RaglineError
from ragline.engine.lm import model_cache
from ragline.engine.lm.packaged import canonical_model_id, resolve_model_source
from ragline.engine.optional import import_optional

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
BACKENDS = ("torch", "onnx", "onnx-int8")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown encoder backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    return backend


def load_sentence_encoder(name: str, device: str | None = None, backend: str = "torch"):
    """A SentenceTransformer, shared with every caller asking for the same one.
    The onnx backends run on the CPU (the default device for them)."""
    check_backend(backend)
    if backend == "torch":
        device = device or model_cache.default_device()
    elif (device or "cpu") != "cpu":
        raise ConfigError(f"the {backend} encoder backend runs on the CPU, not {device!r}; use backend torch there")
    else:
        device = "cpu"
    key = ("sentence_encoder", canonical_model_id(name), device, backend)
    return model_cache.shared(key, lambda: _load(name, device, backend))


def _load(name: str, device: str, backend: str):
    SentenceTransformer = import_optional("sentence_transformers", needed_for="dense retrieval").SentenceTransformer
    source = resolve_model_source(name)
    try:
        model = SentenceTransformer(source, device=device)
    except OSError as err:
        raise RaglineError(
            f"cannot load encoder {name!r}: not a local folder, no packaged copy is installed, "
            f"and the hub did not provide it ({err.__class__.__name__}: {err})"
        ) from None
    if backend != "torch":
        from ragline.engine.lm.onnx_encoder import run_on_onnx

        run_on_onnx(model, int8=backend == "onnx-int8")
    return model


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


# What decides an encoder's output: its configuration (pooling, normalisation,
# length), tokenizer and weights. Alternative runtimes' copies are left out.
_FINGERPRINTED = ("*.json", "*.txt", "*.model", "*.safetensors", "*.bin", "*.pt")
_NOT_FINGERPRINTED_DIRS = {"onnx", "openvino", ".git"}


def encoder_fingerprint(name: str) -> str | None:
    """A hash of the files of a local (or packaged) encoder, so that an index
    notices when the folder it was built with has changed in place; None for a
    hub id that has no local folder."""
    source = Path(resolve_model_source(name))
    if not source.is_dir():
        return None
    files = sorted(f for pattern in _FINGERPRINTED for f in source.rglob(pattern)
                   if f.is_file() and not _NOT_FINGERPRINTED_DIRS & set(f.relative_to(source).parts))
    signature = tuple((str(f.relative_to(source)), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _hash_files(source, signature)


@functools.cache
def _hash_files(source: Path, signature: tuple) -> str:
    """Keyed by names, sizes and modification times: a file changed in place
    gets a new key and is hashed again."""
    digest = hashlib.sha256()
    for relative, _, _ in signature:
        digest.update(relative.encode() + b"\0")
        with open(source / relative, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
