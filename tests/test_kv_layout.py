"""The assembled block layout: laid out once, rotated with shared tables,
reused across questions without their tokens leaking into it, and never found
for another order or pruning of the blocks. Exact against the reference
rotation and the block-diagonal forward."""

from __future__ import annotations

import threading

import pytest
import torch
from tiny_causal_lms import masked_logits, passages, query, random_blocks, tiny_model

from ragline.engine.lm.prompts import PromptBuilder
from ragline.generators.kv_reuse.block_attention import (
    assemble_cache,
    final_block_logits,
    greedy_from_cache,
    prefill_block,
    rotary_frequencies,
)
from ragline.generators.kv_reuse.block_layout import lay_out
from ragline.generators.kv_reuse.block_prompt import block_prompt
from ragline.generators.kv_reuse.layout_store import LayoutStore
from ragline.generators.kv_reuse.passage_reuse import PassageKVReuse
from ragline.kernels.rope_shift import rope_shift_in_place, rope_shift_reference, rope_tables


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_rotation_with_tables_equals_the_reference(dtype):
    keys = torch.randn(1, 2, 10, 24).to(dtype)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 8) / 8))  # 16 of 24 dimensions rotary
    shifts = torch.tensor([3] * 4 + [250] * 6)
    expected = torch.cat([rope_shift_reference(keys[..., :4, :], 3, inv_freq),
                          rope_shift_reference(keys[..., 4:, :], 250, inv_freq)], dim=-2)
    buffer = torch.zeros(1, 2, 16, 24, dtype=dtype)
    buffer[..., 2:12, :] = keys
    rope_shift_in_place(buffer[..., 2:12, :], *rope_tables(shifts, inv_freq))
    torch.testing.assert_close(buffer[..., 2:12, :], expected, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-2)
    assert not buffer[..., :2, :].any() and not buffer[..., 12:, :].any()  # nothing outside the view is touched


def test_layout_places_blocks_like_the_reference_and_leaves_the_first_block_as_cached():
    model = tiny_model("llama3-scaled")
    inv_freq = rotary_frequencies(model)
    blocks = [prefill_block(model, ids) for ids in random_blocks([5, 9, 4])]
    layout = lay_out(blocks, inv_freq, room=7)
    assert layout.length == 18 and layout.room == 7
    for layer in range(len(blocks[0].keys)):
        expected = torch.cat([blocks[0].keys[layer], rope_shift_reference(blocks[1].keys[layer], 5, inv_freq),
                              rope_shift_reference(blocks[2].keys[layer], 14, inv_freq)], dim=-2)
        torch.testing.assert_close(layout.keys[layer][..., :18, :], expected, rtol=0, atol=1e-6)
        assert torch.equal(layout.keys[layer][..., :5, :], blocks[0].keys[layer])  # offset 0: not rotated
        assert torch.equal(layout.values[layer][..., :18, :], torch.cat([b.values[layer] for b in blocks], dim=-2))
    per_block = lay_out(blocks, inv_freq, room=7, shift=rope_shift_reference)  # a custom kernel, block by block
    for mine, theirs in zip(layout.keys, per_block.keys):
        torch.testing.assert_close(mine[..., :18, :], theirs[..., :18, :], rtol=0, atol=1e-6)


def test_decoding_past_the_room_moves_to_own_buffers_and_stays_exact():
    model = tiny_model("llama")
    *blocks, final = random_blocks([8, 10, 6, 5])
    cache = assemble_cache(model, [prefill_block(model, b) for b in blocks], room=2)  # room for 2 of 13 tokens
    generated = greedy_from_cache(model, cache, final, 8)
    expected, tail = [], list(final)
    for _ in range(8):
        expected.append(int(masked_logits(model, blocks, tail)[-1].argmax()))
        tail.append(expected[-1])
    assert generated == expected and cache.get_seq_length() == 24 + 5 + 7


def test_a_shared_layout_is_never_written_by_the_caches_over_it():
    model = tiny_model("llama")
    inv_freq = rotary_frequencies(model)
    *blocks, final = random_blocks([6, 7, 5])
    layout = lay_out([prefill_block(model, b) for b in blocks], inv_freq, room=16)
    before = [k[..., :13, :].clone() for k in layout.keys]
    reference = masked_logits(model, blocks, final)[13:]
    with layout.open_cache(model.config) as first, layout.open_cache(model.config) as second:
        # The first writes into the room, the concurrent second into a copy: both exact.
        for cache in (first, second):
            assert (final_block_logits(model, cache, final) - reference).abs().max() <= 1e-4
        assert first.layers[0].keys.data_ptr() == layout.keys[0].data_ptr()
        assert second.layers[0].keys.data_ptr() != layout.keys[0].data_ptr()
    kept = layout.detached_cache(model.config)
    final_block_logits(model, kept, random_blocks([9], seed=3)[0])  # a longer question, after the first ones
    with layout.open_cache(model.config) as again:
        assert (final_block_logits(model, again, final) - reference).abs().max() <= 1e-4
    assert all(torch.equal(k[..., :13, :], b) for k, b in zip(layout.keys, before))


def test_a_cache_that_outlives_its_with_copies_before_writing():
    model = tiny_model("llama")
    layout = lay_out([prefill_block(model, b) for b in random_blocks([6, 7])], rotary_frequencies(model), room=8)
    with layout.open_cache(model.config) as escaped:
        pass
    final_block_logits(model, escaped, [1, 2, 3])
    assert escaped.layers[0].keys.data_ptr() != layout.keys[0].data_ptr()
    with layout.open_cache(model.config) as current:  # the room is free again
        final_block_logits(model, current, [4, 5])
        assert current.layers[0].keys.data_ptr() == layout.keys[0].data_ptr()


def test_sliding_window_models_get_stock_layers():
    from transformers import AutoModelForCausalLM, MistralConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(MistralConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=64), attn_implementation="sdpa").eval()
    *blocks, final = random_blocks([7, 9, 5])
    layout = lay_out([prefill_block(model, b) for b in blocks], rotary_frequencies(model), room=8)
    cache = layout.own_cache(model.config)
    assert type(cache.layers[0]).__name__ == "DynamicSlidingWindowLayer"
    reference = masked_logits(model, blocks, final)[16:]
    assert (final_block_logits(model, cache, final) - reference).abs().max() <= 1e-4


def test_layout_store_keeps_recent_layouts_within_its_budget():
    model = tiny_model("llama")
    inv_freq = rotary_frequencies(model)
    layouts = [lay_out([prefill_block(model, ids)], inv_freq, room=4) for ids in random_blocks([6, 6, 6])]
    store = LayoutStore(max_bytes=int(2.5 * layouts[0].nbytes))
    store.put("a", layouts[0])
    store.put("b", layouts[1])
    assert store.get("a") is layouts[0]  # "b" is now the least recently used
    store.put("c", layouts[2])
    assert store.get("b") is None and store.get("a") is layouts[0] and store.get("c") is layouts[2]
    assert store.bytes_held == 2 * layouts[0].nbytes
    nothing = LayoutStore(max_bytes=0)
    nothing.put("a", layouts[0])
    assert nothing.get("a") is None and nothing.bytes_held == 0


# -- reuse across questions ------------------------------------------------------------------------

def reuse_for(model_folder: str, **options) -> PassageKVReuse:
    from ragline.generators.hf_backend import HFGenerator

    reuse = PassageKVReuse(HFGenerator(model_folder, device="cpu", dtype="float32"), "block", **options)
    reuse.warm_up()
    return reuse


def question_logits(reuse: PassageKVReuse, question: str, passage_list, kept=None):
    """The final block's logits as ``generate`` computes them: over an open
    cache on the prompt's (possibly reused) layout."""
    prompt = block_prompt(reuse.generator.tokenizer, PromptBuilder(), question, passage_list, kept)
    layout, reused = reuse.layout_for(prompt, len(prompt.final))
    with layout.open_cache(reuse.generator.lm.config) as cache:
        return final_block_logits(reuse.generator.lm, cache, prompt.final), reused, prompt


def test_a_reused_layout_answers_another_question_exactly_as_a_fresh_one(tiny_lm):
    warm, fresh = reuse_for(tiny_lm), reuse_for(tiny_lm, layout_bytes=0)
    first, reused, _ = question_logits(warm, "What is the capital of France?", passages())
    assert not reused
    second, reused, prompt = question_logits(warm, "Which river flows through Paris?", passages())
    assert reused  # the same blocks in the same order
    expected, reused_fresh, _ = question_logits(fresh, "Which river flows through Paris?", passages())
    assert not reused_fresh and torch.equal(second, expected)
    reference = masked_logits(warm.generator.lm, [prompt.prefix] + prompt.blocks, prompt.final)
    assert (second - reference[-len(prompt.final):]).abs().max() <= 1e-4
    again, _, _ = question_logits(warm, "What is the capital of France?", passages())
    assert torch.equal(again, first)  # the second question left nothing behind


def test_another_order_or_pruning_of_the_same_blocks_is_another_layout(tiny_lm):
    from ragline.compressors.sentences import sentence_units

    warm = reuse_for(tiny_lm)
    question = "What is the capital of France?"
    question_logits(warm, question, passages())
    reordered, reused, prompt = question_logits(warm, question, passages()[::-1])
    assert not reused
    reference = masked_logits(warm.generator.lm, [prompt.prefix] + prompt.blocks, prompt.final)
    assert (reordered - reference[-len(prompt.final):]).abs().max() <= 1e-4

    first_sentences = {}
    for unit in sentence_units(passages()):
        first_sentences.setdefault(passages()[unit.passage].id, [(unit.start, unit.end)])
    _, reused, _ = question_logits(warm, question, passages(), first_sentences)
    assert not reused


def test_generate_reports_layout_reuse_and_where_the_time_went(tiny_lm):
    from ragline.engine.pipeline import Pipeline
    from ragline.generators.generate import Generate

    stage = Generate(model=tiny_lm, passages=3, max_new_tokens=3, options={"device": "cpu"}, kv_reuse="block")
    cold = Pipeline([stage]).run([query(passages())])[0].trace[-1].extra
    warm = Pipeline([stage]).run([query(passages(), "Which river flows through Paris?")])[0].trace[-1].extra
    assert not cold["layout_reused"] and warm["layout_reused"]
    assert warm["misses"] == 0 and warm["memory_hits"] == cold["misses"]  # every block served from memory
    assert warm["rotation_s"] == 0 and cold["rotation_s"] > 0
    assert all(warm[key] >= 0 for key in ("prompt_s", "layout_s"))


def test_concurrent_questions_over_one_layout_stay_exact(tiny_lm):
    warm = reuse_for(tiny_lm)
    questions = ["What is the capital of France?", "Which river flows through Paris?", "Are bananas yellow?"]
    expected = {q: question_logits(reuse_for(tiny_lm, layout_bytes=0), q, passages())[0] for q in questions}
    question_logits(warm, questions[0], passages())  # the layout now exists
    failures = []

    def ask(question: str) -> None:
        try:
            for _ in range(5):
                logits, _, _ = question_logits(warm, question, passages())
                assert torch.equal(logits, expected[question]), question
        except Exception as err:  # collected: an assertion in a thread would not fail the test
            failures.append(err)

    threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
