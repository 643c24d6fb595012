"""ragline's CPU SDPA for grouped-query models (engine/lm/grouped_attention.py)
computes what transformers' sdpa computes, without expanding the key and
value heads, and is what load_causal_lm gives a model on the CPU."""

from __future__ import annotations

import pytest
import torch
from tiny_causal_lms import tiny_model

from ragline.engine.lm.grouped_attention import register


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3"])
def test_a_masked_forward_over_a_cache_equals_transformers_sdpa(kind, monkeypatch):
    """A question's tokens over a cache (a mask, several query tokens: the
    case it takes over), then one decoding step (the case it leaves alone),
    with a padded batch for good measure."""
    from transformers import DynamicCache

    from ragline.engine.lm.cache_argument import with_cache

    grouped_calls = []
    stock_sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        grouped_calls.append(kwargs.get("enable_gqa", False))
        return stock_sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    model = tiny_model(kind)
    assert model.config.num_attention_heads > model.config.num_key_value_heads  # grouped heads
    generator = torch.Generator().manual_seed(3)
    context = torch.randint(0, 128, (2, 40), generator=generator)
    question = torch.randint(0, 128, (2, 7), generator=generator)
    mask = torch.ones(2, 47, dtype=torch.long)
    mask[1, :5] = 0  # left padding on the second row

    def run(implementation):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            cache = DynamicCache(config=model.config)
            model(input_ids=context, attention_mask=mask[:, :40], **with_cache(model, cache), use_cache=True)
            logits = model(input_ids=question, attention_mask=mask, **with_cache(model, cache), use_cache=True).logits
            step = model(input_ids=question[:, -1:], attention_mask=torch.cat([mask, mask[:, -1:]], 1),
                         **with_cache(model, cache), use_cache=True).logits
        return logits, step

    want = run("sdpa")
    assert not any(grouped_calls)  # transformers expanded the heads
    got = run(register())
    assert any(grouped_calls)  # this time the kernel took them grouped
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_causal_lms_on_the_cpu_are_loaded_with_it(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from ragline.engine.lm.causal_lm import load_causal_lm

    tiny_model("llama").save_pretrained(tmp_path / "tiny")
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")),
                            eos_token="a").save_pretrained(tmp_path / "tiny")
    loaded, _ = load_causal_lm(str(tmp_path / "tiny"), device="cpu")
    assert loaded.config._attn_implementation == register()
