"""A GPU check that fits one lease: what only a GPU shows, measured on a
randomly initialised Llama-3-8B-shaped model in bf16 (speed does not depend
on the weights, and no weights travel to the machine).

1. Time to first token over 512-token passages at 8K and 32K tokens of
   context: full prefill of the whole prompt vs the warm block cache
   (cached passage blocks assembled with their keys rotated into place, then
   only the question prefilled).
2. The attention probe (last token → 512-token spans, every layer and head)
   against a plain SDPA forward of the same tokens: time and peak memory.
3. The compiled Triton kernels (span attention, RoPE shift) against their
   torch references: time and the largest difference.

Self-contained: downloads nothing, needs torch, transformers and triton.
``--tiny`` runs the same code on a small model and short contexts on the CPU
(Triton under its interpreter), so a CPU test keeps this script from rotting.

    python benchmarks/gpu_check.py            # on the GPU machine, < 8 minutes
    python benchmarks/gpu_check.py --tiny     # anywhere, seconds

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def _importable_ragline() -> None:
    """``import ragline`` on a machine where it is not installed (the GPU
    machine gets a bare copy of the checkout): the checkout's ``src/`` on
    ``sys.path``."""
    import importlib.util

    if importlib.util.find_spec("ragline") is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


_importable_ragline()

FULL = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768 + 1024,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="A small model on the CPU: a smoke test.")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.tiny:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    import torch

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    lengths = [512, 1024] if args.tiny else [8192, 32768]
    passage = 128 if args.tiny else 512
    figures: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                     "dtype": str(dtype).replace("torch.", ""), "passage_tokens": passage, "model": "tiny" if args.tiny else "llama-3-8b-shaped (random)"}
    model = build_model(TINY if args.tiny else FULL, device, dtype)
    figures["parameters_billion"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 3)
    for length in lengths:
        log(f"time to first token at {length} tokens")
        figures.update(ttft(model, length, passage, args.repeats, device))
        log(f"attention probe at {length} tokens")
        figures.update(probe_cost(model, length, passage, args.repeats, device))
    log("Triton kernels against the torch references")
    figures.update(kernels(model, device, dtype, args.repeats))
    print(json.dumps(figures))


def build_model(config: dict, device, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**config, attn_implementation="sdpa")).to(dtype).eval()
    return model


def timed(fn, repeats: int, device) -> float:
    """Median wall seconds of ``fn`` after one warm-up call."""
    import torch

    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ttft(model, length: int, passage: int, repeats: int, device) -> dict:
    """Full prefill of ``length`` tokens plus a 32-token question, against the
    warm block cache: the passages' blocks already prefilled (as a store would
    hold them), assembled with rotated keys, then only the question."""
    import torch

    from ragline.generators.kv_reuse.block_attention import (
        assemble_cache,
        final_block_logits,
        prefill_block,
        rotary_frequencies,
    )
    from ragline.generators.kv_reuse.passage_reuse import _shift_kernel

    generator = torch.Generator().manual_seed(length)
    vocab = model.config.vocab_size
    blocks = [torch.randint(0, vocab, (passage,), generator=generator).tolist() for _ in range(length // passage)]
    question = torch.randint(0, vocab, (32,), generator=generator).tolist()
    all_ids = torch.tensor([[t for b in blocks for t in b] + question], device=device)

    def full() -> None:
        with torch.inference_mode():
            model(input_ids=all_ids, logits_to_keep=1)

    cached = [prefill_block(model, b) for b in blocks]
    inv_freq = rotary_frequencies(model)
    shift = _shift_kernel("auto", device)

    def warm() -> None:
        cache = assemble_cache(model, cached, inv_freq, shift)
        final_block_logits(model, cache, question)

    full_s, warm_s = timed(full, repeats, device), timed(warm, repeats, device)
    return {f"ttft_full_{length}": round(full_s, 4), f"ttft_warm_block_{length}": round(warm_s, 4),
            f"ttft_speedup_{length}": round(full_s / warm_s, 2)}


def probe_cost(model, length: int, passage: int, repeats: int, device) -> dict:
    import torch

    from ragline.engine.lm.attention_probe import AttentionProbe

    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(1)).to(device)
    span_ids = torch.arange(length, device=device) // passage
    probe = AttentionProbe(model, backend="auto")

    def plain() -> None:
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False, logits_to_keep=1)

    def probed() -> None:
        probe.run(ids, span_ids)

    figures = {}
    for name, fn in (("plain", plain), ("probe", probed)):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        figures[f"{name}_seconds_{length}"] = round(timed(fn, repeats, device), 4)
        if device.type == "cuda":
            figures[f"{name}_peak_gib_{length}"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    figures[f"probe_time_ratio_{length}"] = round(figures[f"probe_seconds_{length}"] / figures[f"plain_seconds_{length}"], 3)
    if device.type == "cuda":
        figures[f"probe_memory_ratio_{length}"] = round(figures[f"probe_peak_gib_{length}"] / figures[f"plain_peak_gib_{length}"], 3)
    return figures


def kernels(model, device, dtype, repeats: int) -> dict:
    import torch

    from ragline.generators.kv_reuse.block_attention import rotary_frequencies
    from ragline.kernels.rope_shift import rope_shift_reference
    from ragline.kernels.rope_shift_triton import rope_shift_triton
    from ragline.kernels.span_attention import causal_rows, span_attention_reference
    from ragline.kernels.span_attention_triton import span_attention_triton

    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    length = 256 if device.type == "cpu" else 32768
    generator = torch.Generator().manual_seed(2)
    query = torch.randn(1, config.num_attention_heads, 1, head_dim, generator=generator).to(device, dtype)
    key = torch.randn(1, config.num_key_value_heads, length, head_dim, generator=generator).to(device, dtype)
    span_ids = (torch.arange(length) // 64).to(device)[None]
    allowed = causal_rows(torch.tensor([length - 1], device=device), length)
    num_spans = int(span_ids.max()) + 1
    scaling = head_dim ** -0.5
    reference = span_attention_reference(query, key, allowed, span_ids, num_spans, scaling)
    fused = span_attention_triton(query, key, allowed, span_ids, num_spans, scaling)
    figures = {"span_kernel_length": length,
               "span_max_abs_diff": float((reference - fused).abs().max()),
               "span_torch_seconds": round(timed(lambda: span_attention_reference(query, key, allowed, span_ids, num_spans, scaling), repeats, device), 5),
               "span_triton_seconds": round(timed(lambda: span_attention_triton(query, key, allowed, span_ids, num_spans, scaling), repeats, device), 5)}
    inv_freq = rotary_frequencies(model).to(device)
    keys = torch.randn(1, config.num_key_value_heads, 512 if device.type == "cpu" else 8192, head_dim,
                       generator=generator).to(device, dtype)
    figures.update(
        rope_max_abs_diff=float((rope_shift_reference(keys, 4096, inv_freq).float()
                                 - rope_shift_triton(keys, 4096, inv_freq).float()).abs().max()),
        rope_torch_seconds=round(timed(lambda: rope_shift_reference(keys, 4096, inv_freq), repeats, device), 5),
        rope_triton_seconds=round(timed(lambda: rope_shift_triton(keys, 4096, inv_freq), repeats, device), 5),
    )
    return figures


if __name__ == "__main__":
    main()
