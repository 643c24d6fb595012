"""CacheBlend (``kv_reuse: blend``): fraction 0 is block attention, fraction 1
a full prefill, and in between the chosen tokens are exactly recomputed
tokens — checked against one masked forward that spells the method out."""

from __future__ import annotations

import pytest
import torch
from tiny_causal_lms import random_blocks, tiny_model

from ragline.engine.errors import ConfigError
from ragline.engine.lm.cache_argument import with_cache
from ragline.generators.kv_reuse.block_attention import final_block_logits, prefill_block, rotary_frequencies
from ragline.generators.kv_reuse.block_layout import lay_out
from ragline.generators.kv_reuse.cache_blend import blend, value_deviation


def block_layout(model, blocks):
    return lay_out([prefill_block(model, b) for b in blocks], rotary_frequencies(model), room=32)


def logits_over(model, layout, final):
    with layout.open_cache(model.config) as cache:
        return final_block_logits(model, cache, final)


def spelled_out_logits(model, blocks, chosen, final):
    """One forward that is the method by definition. The sequence holds the
    context (each block seeing only itself: block attention), then a second
    copy of the chosen tokens at their own positions, then the final part.
    A copy sees the context's tokens before it that were not chosen, and the
    copies before it (the recomputed states) — never the block-attention
    states of chosen tokens; the final part sees exactly what the copies do.
    Sliding layers see their window. Logits of the final part."""
    context = [t for b in blocks for t in b]
    n, k, f = len(context), len(chosen), len(final)
    ids = context + [context[i] for i in chosen] + list(final)
    positions = list(range(n)) + list(chosen) + list(range(n, n + f))
    total = n + k + f
    allowed = torch.zeros(total, total, dtype=torch.bool)
    start = 0
    for block in blocks:  # block attention inside the context
        allowed[start:start + len(block), start:start + len(block)] = True
        start += len(block)
    allowed[:n, :n] &= torch.ones(n, n, dtype=torch.bool).tril()
    not_chosen = torch.ones(n, dtype=torch.bool)
    not_chosen[list(chosen)] = False
    position = torch.tensor(positions)
    for row in range(n, total):  # the copies and the final part
        allowed[row, :n] = not_chosen & (position[:n] <= position[row])
        allowed[row, n:row + 1] = True
        allowed[row, n:n + k] &= position[n:n + k] <= position[row]
    masks = allowed[None, None]
    if model.config.model_type == "gemma3_text":
        distance = position[:, None] - position[None, :]
        masks = {"full_attention": masks,
                 "sliding_attention": (allowed & (distance < model.config.sliding_window))[None, None]}
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), position_ids=position[None], attention_mask=masks)
    return out.logits[0, n + k:].float()


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3"])
def test_fraction_one_equals_a_full_prefill(kind):
    model = tiny_model(kind)
    *blocks, final = random_blocks([9, 14, 11, 6])
    context = [t for b in blocks for t in b]
    blended = blend(model, block_layout(model, blocks), context, fraction=1.0)
    assert blended.recomputed == list(range(len(context)))
    with torch.no_grad():
        full = model(input_ids=torch.tensor([context + final])).logits[0, len(context):].float()
    assert (logits_over(model, blended, final) - full).abs().max() <= 1e-4


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_fraction_zero_is_block_attention_itself(kind):
    model = tiny_model(kind)
    *blocks, final = random_blocks([9, 14, 11, 6])
    layout = block_layout(model, blocks)
    blended = blend(model, layout, [t for b in blocks for t in b], fraction=0.0)
    assert blended is layout and blended.recomputed == []
    assert torch.equal(logits_over(model, blended, final), logits_over(model, layout, final))


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3"])
def test_a_partial_blend_recomputes_exactly_the_chosen_tokens(kind):
    model = tiny_model(kind)
    *blocks, final = random_blocks([9, 14, 11, 6], seed=3)
    context = [t for b in blocks for t in b]
    layout = block_layout(model, blocks)
    before = [k[..., :layout.length, :].clone() for k in layout.keys]
    blended = blend(model, layout, context, fraction=0.3)

    chosen = blended.recomputed
    assert len(chosen) == round(0.3 * len(context)) and chosen == sorted(set(chosen))
    assert all(torch.equal(k[..., :layout.length, :], b) for k, b in zip(layout.keys, before))  # source untouched
    kept = [i for i in range(len(context)) if i not in chosen]
    for layer in range(model.config.num_hidden_layers):  # tokens not chosen keep their block states
        assert torch.equal(blended.keys[layer][..., kept, :], layout.keys[layer][..., kept, :])
        assert torch.equal(blended.values[layer][..., kept, :], layout.values[layer][..., kept, :])
    last = model.config.num_hidden_layers - 1
    assert not torch.allclose(blended.values[last][..., chosen, :], layout.values[last][..., chosen, :])

    reference = spelled_out_logits(model, blocks, chosen, final)
    assert (logits_over(model, blended, final) - reference).abs().max() <= 1e-4


def test_the_chosen_tokens_are_those_whose_values_deviate_most_at_the_check_layer():
    from transformers import DynamicCache

    model = tiny_model("llama")
    blocks = random_blocks([10, 10, 10], seed=5)
    context = [t for b in blocks for t in b]
    layout = block_layout(model, blocks)
    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids=torch.tensor([context]), **with_cache(model, cache), use_cache=True)
    for check_layer in (0, 1):
        fresh = cache.layers[check_layer].values
        expected = (fresh - layout.values[check_layer][..., :30, :]).pow(2).sum(dim=(0, 1, 3))
        assert torch.allclose(value_deviation(model, layout, context, check_layer), expected, atol=1e-6)
    # Layer 0 sees no other token: there blocks and a full prefill agree, and only
    # tokens after the first block are told apart from layer 1 on.
    deviation = value_deviation(model, layout, context, 1)
    scale = deviation.max()
    assert value_deviation(model, layout, context, 0).max() <= 1e-6 * scale
    assert deviation[:10].max() <= 1e-6 * scale and deviation[10:].min() > 1e-3 * scale
    chosen = blend(model, layout, context, fraction=0.2, check_layer=1).recomputed
    assert chosen == sorted(deviation.topk(6).indices.tolist())


def test_the_generate_stage_blends_keeps_the_blend_and_equals_full_at_fraction_one(tiny_lm):
    from ragline.engine.index.docstore import query_over
    from ragline.engine.pipeline import Pipeline
    from ragline.engine.types import Passage
    from ragline.generators.generate import Generate

    passages = [Passage(f"p{i}", f"d{i}", text, title) for i, (title, text) in enumerate([
        ("Paris", "Paris is in France."), ("Berlin", "Berlin is in Germany."), ("Rome", "Rome is in Italy.")])]

    def ask(stage, text="Where is Paris?"):
        return Pipeline([stage]).run([query_over("q", text, passages)])[0]

    options = {"device": "cpu"}
    stage = Generate(model=tiny_lm, passages=3, max_new_tokens=6, options=options, kv_reuse="blend",
                     kv_options={"blend_fraction": 0.25})
    first = ask(stage).trace[-1].extra
    assert first["kv_reuse"] == "blend" and first["recomputed_tokens"] == round(0.25 * first["cached_tokens"])
    assert first["layout_reused"] is False and first["blend_s"] > 0
    second = ask(stage, "Where is Rome?").trace[-1].extra
    assert second["layout_reused"] is True  # the blend does not depend on the question

    full = Generate(model=tiny_lm, passages=3, max_new_tokens=6, options=options, kv_reuse="full")
    whole = Generate(model=tiny_lm, passages=3, max_new_tokens=6, options=options, kv_reuse="blend",
                     kv_options={"blend_fraction": 1.0})
    assert ask(whole).answer.text == ask(full).answer.text
    assert Generate(**stage.to_config()).to_config() == stage.to_config()
    for bad in ({"blend_fraction": 1.5}, {"blend_fraction": -0.1}, {"blend_check_layer": 0},
                {"blend_check_layer": 1.5}):
        with pytest.raises(ConfigError, match="blend_"):
            Generate(model=tiny_lm, kv_reuse="blend", kv_options=bad, options=options).warm_up()
