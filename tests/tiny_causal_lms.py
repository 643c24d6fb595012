"""Tiny randomly initialised causal LMs and the block-attention reference the
KV-reuse tests share (tests/ is on pytest's pythonpath): a model per RoPE
variant and architecture, random token blocks, the forward with a
block-diagonal mask, and the three passages and the question the generate
stage is asked."""

from __future__ import annotations

import torch

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def tiny_model(kind: str, window: int = 8):
    """``llama``, ``qwen2`` (Qwen2.5's shape), ``llama3-scaled``, ``linear-scaled`` (RoPE
    scalings), or ``gemma3``: sliding and global layers with Gemma 3's two
    RoPE bases and a ``window`` far shorter than the blocks."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, Qwen2Config

    configs = {
        "llama": lambda: LlamaConfig(**COMMON),
        # Shaped like Qwen2.5-Coder-1.5B: six query heads per key-value head, RoPE base 1e6.
        "qwen2": lambda: Qwen2Config(**{**COMMON, "hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 1},
                                     rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}),
        "llama3-scaled": lambda: LlamaConfig(**COMMON, rope_parameters={
            "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        "linear-scaled": lambda: LlamaConfig(**COMMON, rope_parameters={
            "rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
        "gemma3": lambda: Gemma3TextConfig(
            **COMMON, head_dim=16, sliding_window=window, query_pre_attn_scalar=24,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                             "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0}}),
    }
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(configs[kind](), attn_implementation="sdpa").eval()


def random_blocks(lengths, vocab=128, seed=1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lengths]


def block_diagonal_mask(block_lengths, final_length) -> torch.Tensor:
    """Each block sees itself (causally); the final part sees everything before it."""
    total = sum(block_lengths) + final_length
    mask = torch.zeros(total, total, dtype=torch.bool)
    start = 0
    for length in block_lengths:
        mask[start:start + length, start:start + length] = torch.ones(length, length, dtype=torch.bool).tril()
        start += length
    mask[start:] = torch.ones(total, total, dtype=torch.bool).tril()[start:]
    return mask


def masked_logits(model, blocks, final):
    """Logits of one forward over every token with the block-diagonal mask."""
    ids = [t for b in blocks for t in b] + list(final)
    mask = block_diagonal_mask([len(b) for b in blocks], len(final))
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), attention_mask=mask[None, None]).logits[0].float()


def passages():
    from ragline.engine.types import Passage

    return [Passage("a", "a", "Paris is the capital of France.", "Paris"),
            Passage("b", "b", "Bananas are yellow.", "Bananas"),
            Passage("c", "c", "The Seine flows through Paris.", "Seine")]


def query(passage_list, text="What is the capital of France?"):
    from ragline.engine.index.docstore import query_over

    return query_over("q", text, passage_list)
