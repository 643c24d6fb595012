"""Gemma-3-270M, the second packaged language model: a pretrained (not
instruction-tuned) model whose attention layers alternate five sliding-window
layers (512 tokens, RoPE base 1e4) with one global layer (RoPE base 1e6).

The probe is checked against the model's own eager attention, and block
attention against one forward with the block-diagonal mask, on prompts longer
than the window: the last positions' sliding layers cannot see the start of
the prompt while their global layers can. Block attention is checked on a
tiny model of the same shape as well (window 8, both RoPE bases).
"""

from __future__ import annotations

import pytest
import torch
from tiny_causal_lms import random_blocks, tiny_model

from ragline.engine.index.docstore import MemoryStore
from ragline.engine.lm.attention_probe import AttentionProbe, span_ids_from_ranges
from ragline.engine.lm.cache_argument import with_cache
from ragline.engine.types import Hit, Passage, Query


@pytest.fixture(scope="module")
def gemma3(gemma3_folder):
    from ragline.engine.lm.causal_lm import load_causal_lm

    # By its name, so that the generate stage's tests share this copy.
    return load_causal_lm("gemma-3-270m", device="cpu", dtype="float32")


def long_prompt(tokenizer) -> torch.Tensor:
    """~620 tokens of distinct facts, so that attention has something to tell apart."""
    colours = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange"]
    facts = " ".join(f"Fact {i}: the {colours[i % 8]} box on shelf {i * 7 % 13} holds {i * 37 % 101} stones."
                     for i in range(34))
    text = facts + " Question: how many stones does the green box on shelf 2 hold? Answer:"
    return tokenizer(text, return_tensors="pt").input_ids


@pytest.mark.slow
def test_the_packaged_model_resolves_by_short_name_with_sliding_and_global_layers(gemma3_folder):
    from transformers import AutoConfig

    from ragline.engine.lm.packaged import canonical_model_id

    assert canonical_model_id("gemma-3-270m") == canonical_model_id("Gemma-3-270M") == "google/gemma-3-270m"
    config = AutoConfig.from_pretrained(gemma3_folder)
    assert config.model_type == "gemma3_text" and config.num_hidden_layers == 18 and config.sliding_window == 512
    assert config.layer_types.count("full_attention") == 3
    bases = {kind: params["rope_theta"] for kind, params in config.rope_parameters.items()}
    assert bases == {"sliding_attention": 10_000.0, "full_attention": 1_000_000.0}


def test_a_gguf_joined_from_part_packages_is_converted_once_and_the_joined_file_dropped(tmp_path, monkeypatch):
    import sys
    from importlib.machinery import ModuleSpec
    from types import ModuleType

    from ragline.engine.lm import packaged

    def assemble(path):
        path.write_bytes(b"GGUF")
        return path

    parts = ModuleType("fake_joined_gguf")  # stands in for the package that joins its parts
    parts.__spec__ = ModuleSpec("fake_joined_gguf", None)
    parts.assemble = assemble
    converted = []

    def convert(gguf, tmp):
        converted.append(gguf.read_bytes())
        (tmp / "config.json").write_text("{}")

    monkeypatch.setitem(sys.modules, "fake_joined_gguf", parts)
    monkeypatch.setenv("RAGLINE_CACHE", str(tmp_path))
    monkeypatch.setitem(packaged.PACKAGED, "org/joined", packaged.JoinedGGUF("fake_joined_gguf"))
    monkeypatch.setattr(packaged, "_convert_gguf", convert)
    folder = packaged.packaged_model_path("joined")
    assert folder == tmp_path / "models" / "org--joined" and packaged.packaged_model_path("org/joined") == folder
    assert converted == [b"GGUF"] and sorted(p.name for p in folder.iterdir()) == [
        ".ragline-output", "config.json", "digests.json", "ragline-conversion"]
    monkeypatch.setitem(packaged.PACKAGED, "org/absent", packaged.JoinedGGUF("no_such_package_here"))
    assert packaged.packaged_model_path("org/absent") is None


@pytest.mark.slow
def test_probe_equals_eager_attention_across_the_sliding_window(gemma3):
    model, tokenizer = gemma3
    input_ids = long_prompt(tokenizer)
    length = input_ids.shape[1]
    assert 600 <= length <= 720
    spans = [(1, 60), (60, 200), (200, 400), (400, length - 30), (length - 30, length - 1)]
    positions = [300, length - 1]  # inside the window of every layer; beyond it for sliding layers

    probed = AttentionProbe(model, backend="torch").run(input_ids, span_ids_from_ranges(spans, length),
                                                        query_positions=positions)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            eager = model(input_ids, output_attentions=True, logits_to_keep=1).attentions
    finally:
        model.set_attn_implementation("sdpa")
    expected = torch.stack([torch.stack([a[:, :, positions, s:e].sum(-1) for s, e in spans], -1) for a in eager])

    assert probed.attention.shape == (18, 1, 4, 2, len(spans))
    assert (probed.attention - expected).abs().max() <= 1e-4
    sliding = [i for i, kind in enumerate(model.config.layer_types) if kind == "sliding_attention"]
    full = [i for i, kind in enumerate(model.config.layer_types) if kind == "full_attention"]
    # The window is really exercised: from the last token, the first span lies
    # outside every sliding layer's window but not outside a global layer's.
    assert probed.attention[sliding, :, :, 1, 0].abs().max() == 0
    assert probed.attention[full, :, :, 1, 0].min() > 0


def eiffel_query() -> Query:
    texts = [("Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was completed in 1889."),
             ("Big Ben", "Big Ben is the nickname for the Great Bell of the clock at Westminster in London.")]
    passages = [Passage(f"q/{i}", title, text, title) for i, (title, text) in enumerate(texts)]
    store = MemoryStore(passages)
    return Query("q", "When was the Eiffel Tower completed?",
                 ranking=[Hit(p.id, 1.0 / rank, rank, "given", store) for rank, p in enumerate(passages, 1)])


@pytest.mark.slow
def test_the_generate_stage_answers_from_the_passages(gemma3):
    from ragline.engine.pipeline import Pipeline
    from ragline.generators.generate import Generate

    # A pretrained model gets the plain-text prompt and runs on after its
    # answer: a stop string ends it.
    stage = Generate(model="gemma-3-270m", passages=2, max_new_tokens=24, cite=False, stop=["\n"],
                     options={"device": "cpu", "dtype": "float32"})
    (result,) = Pipeline([stage]).run([eiffel_query()])
    assert "1889" in result.answer.text and "\n" not in result.answer.text
    assert result.trace[-1].extra["model"] == "google/gemma-3-270m"


@pytest.mark.slow
def test_a_block_prompt_without_a_chat_template_starts_with_bos_like_the_plain_prompt(gemma3):
    from ragline.engine.lm.prompt_spans import prompt_ids
    from ragline.engine.lm.prompts import PromptBuilder
    from ragline.generators.kv_reuse.block_prompt import block_prompt

    _, tokenizer = gemma3
    query, builder = eiffel_query(), PromptBuilder(cite=False)
    passages = list(query.ranking[0].store.get([hit.id for hit in query.ranking]).values())
    cut = block_prompt(tokenizer, builder, query.text, passages)
    assert cut.all_ids == prompt_ids(tokenizer, builder.messages(query.text, passages))
    assert cut.prefix[0] == tokenizer.bos_token_id


@pytest.mark.slow
def test_the_generate_stage_answers_from_cached_passage_blocks(gemma3):
    from ragline.engine.pipeline import Pipeline
    from ragline.generators.generate import Generate

    stage = Generate(model="gemma-3-270m", passages=2, max_new_tokens=24, cite=False, stop=["\n"],
                     options={"device": "cpu", "dtype": "float32"}, kv_reuse="block")
    (result,) = Pipeline([stage]).run([eiffel_query()])
    assert "1889" in result.answer.text
    assert result.trace[-1].extra["cached_tokens"] > result.trace[-1].extra["prefilled_tokens"]


# -- block attention: per-layer RoPE bases and sliding windows ----------------------------------------

def windowed_block_logits(model, blocks, final) -> torch.Tensor:
    """One forward over every token, each block seeing only itself and the final
    part everything before it, contiguous positions; sliding layers also see
    only their window. Logits of the final part."""
    ids = [t for b in blocks for t in b] + list(final)
    total, start = len(ids), 0
    mask = torch.zeros(total, total, dtype=torch.bool)
    for block in blocks:
        mask[start:start + len(block), start:start + len(block)] = True
        start += len(block)
    mask[start:] = True
    mask &= torch.ones(total, total, dtype=torch.bool).tril()
    distance = torch.arange(total)[:, None] - torch.arange(total)[None, :]
    masks = {"full_attention": mask[None, None],
             "sliding_attention": (mask & (distance < model.config.sliding_window))[None, None]}
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), attention_mask=masks, logits_to_keep=len(final)).logits
    return logits[0].float()


def test_one_cached_block_longer_than_the_window_equals_a_plain_forward():
    from ragline.generators.kv_reuse.block_attention import assemble_cache, final_block_logits, prefill_block

    model = tiny_model("gemma3")
    block, final = random_blocks([19, 6])
    cached = prefill_block(model, block)
    assert [keys.shape[-2] for keys in cached.keys] == [19, 19, 19]  # sliding layers keep every key too
    logits = final_block_logits(model, assemble_cache(model, [cached]), final)
    with torch.no_grad():
        plain = model(input_ids=torch.tensor([block + final])).logits[0, len(block):].float()
    assert (logits - plain).abs().max() <= 1e-4


def test_several_cached_blocks_equal_the_windowed_block_diagonal_forward():
    from ragline.generators.kv_reuse.block_attention import (
        assemble_cache,
        final_block_logits,
        greedy_from_cache,
        prefill_block,
    )

    model = tiny_model("gemma3")
    *blocks, final = random_blocks([7, 12, 9, 5, 6])
    logits = final_block_logits(model, assemble_cache(model, [prefill_block(model, b) for b in blocks]), final)
    assert (logits - windowed_block_logits(model, blocks, final)).abs().max() <= 1e-4

    generated = greedy_from_cache(model, assemble_cache(model, [prefill_block(model, b) for b in blocks]), final, 5)
    expected, tail = [], list(final)
    for _ in range(5):  # the reference, re-run with each new token appended to the final part
        expected.append(int(windowed_block_logits(model, blocks, tail)[-1].argmax()))
        tail.append(expected[-1])
    assert generated == expected


def test_each_layer_moves_its_keys_with_its_own_rope_base():
    from transformers import DynamicCache

    from ragline.generators.kv_reuse.block_attention import prefill_block, rotary_frequencies
    from ragline.generators.kv_reuse.rope_bases import layer_frequencies
    from ragline.kernels.rope_shift import rope_shift_reference

    model = tiny_model("gemma3")
    inv_freq = rotary_frequencies(model)
    assert inv_freq.shape == (3, 8) and not torch.equal(inv_freq[0], inv_freq[1])
    (ids,) = random_blocks([10])
    cached = prefill_block(model, ids)
    shifted = DynamicCache()  # the same tokens run at positions 40..49: only RoPE differs
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]), position_ids=torch.arange(40, 50)[None], **with_cache(model, shifted))
    for layer, keys in enumerate(cached.keys):
        moved = rope_shift_reference(keys, 40, layer_frequencies(inv_freq, layer))
        assert (moved - shifted.layers[layer].keys).abs().max() <= 1e-5
    wrong_base = rope_shift_reference(cached.keys[1], 40, inv_freq[0])  # the global layer with the local base
    assert (wrong_base - shifted.layers[1].keys).abs().max() > 1e-2


def test_a_layer_type_whose_rope_cannot_be_shifted_is_refused():
    from transformers import AutoModelForCausalLM

    from ragline.engine.errors import RaglineError
    from ragline.generators.kv_reuse.block_attention import rotary_frequencies

    config = tiny_model("gemma3").config
    config.rope_parameters["full_attention"] = {"rope_type": "dynamic", "rope_theta": 1_000_000.0, "factor": 2.0}
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(RaglineError, match="'dynamic' of the full_attention layers"):
        rotary_frequencies(model)


@pytest.mark.slow
def test_cached_blocks_are_exact_on_gemma3_across_the_sliding_window(gemma3):
    from ragline.generators.kv_reuse.block_attention import assemble_cache, final_block_logits, prefill_block

    model, tokenizer = gemma3
    ids = long_prompt(tokenizer)[0].tolist()
    # Three blocks (the first with BOS) and a final part beyond the window: its
    # sliding layers do not see the first block's start, its global layers do.
    blocks, final = [ids[:200], ids[200:420], ids[420:-16]], ids[-16:]
    logits = final_block_logits(model, assemble_cache(model, [prefill_block(model, b) for b in blocks]), final)
    # fp32 logits reach ~25 in magnitude here; the two paths differ by < 1e-4.
    assert (logits - windowed_block_logits(model, blocks, final)).abs().max() <= 5e-4


@pytest.mark.slow
def test_a_full_blend_equals_a_full_prefill_on_gemma3_across_the_sliding_window(gemma3):
    """CacheBlend at fraction 1 recomputes every token over the block layout:
    with sliding windows shorter than the context, the real model's answer
    logits are those of a plain forward."""
    from ragline.generators.kv_reuse.block_attention import final_block_logits, prefill_block, rotary_frequencies
    from ragline.generators.kv_reuse.block_layout import lay_out
    from ragline.generators.kv_reuse.cache_blend import blend

    model, tokenizer = gemma3
    ids = long_prompt(tokenizer)[0].tolist()
    blocks, final = [ids[:200], ids[200:420], ids[420:-16]], ids[-16:]
    layout = lay_out([prefill_block(model, b) for b in blocks], rotary_frequencies(model), room=32)
    blended = blend(model, layout, ids[:-16], fraction=1.0)
    with blended.open_cache(model.config) as cache:
        logits = final_block_logits(model, cache, final)
    with torch.no_grad():
        plain = model(input_ids=torch.tensor([ids])).logits[0, -16:].float()
    assert (logits - plain).abs().max() <= 5e-4
