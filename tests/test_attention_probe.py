"""The probe against the model's own eager attention weights.

For each architecture, the attention the probe reads from an SDPA forward
must equal span sums of ``output_attentions=True`` rows from an eager forward
of the same weights (fp32, ≤ 1e-4), for both kernels.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from ragline.engine.errors import RaglineError
from ragline.engine.lm.attention_probe import AttentionProbe, span_ids_from_ranges

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

BACKENDS = ["torch", pytest.param("triton", marks=needs_triton)]
SPANS = [(0, 5), (5, 12), (12, 30), (33, 38)]
POSITIONS = [20, 39]


def tiny_config(kind: str):
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if kind == "llama":
        return LlamaConfig(**common)
    if kind == "qwen2":  # shaped like Qwen2.5-Coder-1.5B: six query heads per key-value head, RoPE base 1e6
        return Qwen2Config(**{**common, "hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 1},
                           rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
    if kind == "qwen3":
        return Qwen3Config(**common, head_dim=16)
    if kind == "mistral":  # a window shorter than the sequence, on every layer
        return MistralConfig(**common, sliding_window=10)
    if kind == "gemma3":  # sliding and global layers, its own query scaling
        return Gemma3TextConfig(**common, head_dim=16, sliding_window=8, query_pre_attn_scalar=24,
                                layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    raise ValueError(kind)


def sdpa_and_eager(config):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    sdpa = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="sdpa").eval()
    eager = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    return sdpa, eager


def eager_span_sums(eager, input_ids, attention_mask, positions, spans):
    with torch.no_grad():
        layers = eager(input_ids, attention_mask=attention_mask, output_attentions=True).attentions
    return torch.stack([torch.stack([a[:, :, positions, s:e].sum(-1) for s, e in spans], -1) for a in layers])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "mistral", "gemma3"])
def test_probe_equals_eager_attention_summed_onto_spans(kind, backend):
    config = tiny_config(kind)
    sdpa, eager = sdpa_and_eager(config)
    torch.manual_seed(1)
    input_ids = torch.randint(0, 128, (2, 40))
    mask = torch.ones_like(input_ids)
    mask[1, :6] = 0  # the second row is left-padded
    span_ids = span_ids_from_ranges(SPANS, 40)

    probed = AttentionProbe(sdpa, backend=backend, key_chunk=16).run(
        input_ids, span_ids, query_positions=POSITIONS, attention_mask=mask)
    expected = eager_span_sums(eager, input_ids, mask, POSITIONS, SPANS)

    assert probed.attention.shape == (3, 2, config.num_attention_heads, 2, len(SPANS))
    assert torch.allclose(probed.attention, expected, atol=1e-4, rtol=0)
    # The forward itself is untouched: same next-token logits as a plain SDPA call.
    with torch.no_grad():
        plain = sdpa(input_ids, attention_mask=mask).logits[:, -1]
    assert torch.allclose(probed.last_logits, plain, atol=1e-5)
    assert sdpa.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("backend", BACKENDS)
def test_probe_equals_eager_attention_on_smollm2(smollm2_folder, backend):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    sdpa = AutoModelForCausalLM.from_pretrained(smollm2_folder, attn_implementation="sdpa").eval()
    eager = AutoModelForCausalLM.from_pretrained(smollm2_folder, attn_implementation="eager").eval()
    text = ("The Eiffel Tower is in Paris. It was finished in 1889. Gustave Eiffel's company built it. "
            "Question: When was the tower finished? Answer:")
    input_ids = tokenizer(text, return_tensors="pt").input_ids
    length = input_ids.shape[1]
    spans = [(0, 8), (8, 16), (16, 26), (26, length - 1)]
    probe = AttentionProbe(sdpa, backend=backend)

    probed = probe.run(input_ids, span_ids_from_ranges(spans, length))
    expected = eager_span_sums(eager, input_ids, None, [length - 1], spans)
    assert torch.allclose(probed.attention, expected, atol=1e-4, rtol=0)

    shares = probed.renormalized().attention
    assert torch.allclose(shares.sum(-1), torch.ones_like(shares.sum(-1)), atol=1e-5)


def test_single_token_spans_and_a_subset_of_layers():
    sdpa, eager = sdpa_and_eager(tiny_config("llama"))
    input_ids = torch.randint(0, 128, (1, 24))
    tokens = [(i, i + 1) for i in range(24)]
    probed = AttentionProbe(sdpa, backend="torch").run(input_ids, torch.arange(24), layers=[2])
    expected = eager_span_sums(eager, input_ids, None, [23], tokens)[2:]
    assert probed.attention.shape == (1, 1, 4, 1, 24)
    assert torch.allclose(probed.attention, expected, atol=1e-4, rtol=0)
    assert torch.allclose(probed.attention.sum(-1), torch.ones(1, 1, 4, 1), atol=1e-5)


def test_unsupported_architecture_is_named():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50))
    with pytest.raises(RaglineError, match="'gpt2'"):
        AttentionProbe(model)


def test_bad_spans_and_padded_probe_positions_are_refused():
    sdpa, _ = sdpa_and_eager(tiny_config("llama"))
    with pytest.raises(RaglineError, match="overlaps"):
        span_ids_from_ranges([(0, 5), (4, 8)], 10)
    with pytest.raises(RaglineError, match="outside"):
        span_ids_from_ranges([(0, 12)], 10)
    input_ids = torch.randint(0, 128, (1, 10))
    right_padded = torch.tensor([[1] * 8 + [0] * 2])
    with pytest.raises(RaglineError, match="padding"):
        AttentionProbe(sdpa).run(input_ids, torch.zeros(10, dtype=torch.long), attention_mask=right_padded)
