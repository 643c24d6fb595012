"""Block attention is exact: cached blocks laid out with rotated keys give the
logits (and the greedy answer) of one forward with a block-diagonal mask."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from tiny_causal_lms import masked_logits, passages, query, random_blocks, tiny_model

from ragline.engine.errors import ConfigError, RaglineError
from ragline.generators.kv_reuse.block_attention import (
    assemble_cache,
    final_block_logits,
    greedy_from_cache,
    prefill_block,
    rotary_frequencies,
)
from ragline.kernels.rope_shift import rope_shift_reference

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


@pytest.mark.parametrize("kind", ["llama", "qwen2", "llama3-scaled", "linear-scaled"])
def test_one_cached_block_equals_a_plain_forward(kind):
    model = tiny_model(kind)
    block, final = random_blocks([11, 6])
    logits = final_block_logits(model, assemble_cache(model, [prefill_block(model, block)]), final)
    with torch.no_grad():
        plain = model(input_ids=torch.tensor([block + final])).logits[0, len(block):].float()
    assert (logits - plain).abs().max() <= 1e-4


@pytest.mark.parametrize("kind", ["llama", "qwen2", "llama3-scaled", "linear-scaled"])
def test_several_cached_blocks_equal_the_block_diagonal_forward(kind):
    model = tiny_model(kind)
    *blocks, final = random_blocks([7, 12, 9, 5, 6])
    logits = final_block_logits(model, assemble_cache(model, [prefill_block(model, b) for b in blocks]), final)
    reference = masked_logits(model, blocks, final)[sum(map(len, blocks)):]
    assert (logits - reference).abs().max() <= 1e-4


def test_greedy_generation_from_the_assembled_cache_equals_the_masked_forward():
    model = tiny_model("llama")
    *blocks, final = random_blocks([8, 10, 6, 5])
    generated = greedy_from_cache(model, assemble_cache(model, [prefill_block(model, b) for b in blocks]), final, 8)

    expected, tail = [], list(final)
    for _ in range(8):  # the masked forward, re-run with each new token appended to the final part
        expected.append(int(masked_logits(model, blocks, tail)[-1].argmax()))
        tail.append(expected[-1])
    assert generated == expected


def test_cached_blocks_are_exact_on_smollm2(smollm2_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    texts = ["The Eiffel Tower is in Paris.", " It was finished in 1889 for the World's Fair.",
             " Gustave Eiffel's company designed it.", "\nQuestion: When was it finished?\nAnswer:"]
    *blocks, final = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    one = final_block_logits(model, assemble_cache(model, [prefill_block(model, blocks[0])]), final)
    with torch.no_grad():
        plain = model(input_ids=torch.tensor([blocks[0] + final])).logits[0, len(blocks[0]):].float()
    assert (one - plain).abs().max() <= 1e-4
    several = final_block_logits(model, assemble_cache(model, [prefill_block(model, b) for b in blocks]), final)
    assert (several - masked_logits(model, blocks, final)[sum(map(len, blocks)):]).abs().max() <= 1e-4


def test_shifts_compose_and_match_rope_at_the_new_position():
    model = tiny_model("llama3-scaled")
    inv_freq = rotary_frequencies(model)
    raw = torch.randn(1, 2, 6, 16)
    rotary = model.model.rotary_emb
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    def at(positions):
        cos, sin = rotary(raw, torch.tensor([positions]))
        return apply_rotary_pos_emb(raw, raw, cos, sin)[1]

    assert torch.allclose(rope_shift_reference(at(list(range(6))), 40, inv_freq), at(list(range(40, 46))), atol=1e-5)
    twice = rope_shift_reference(rope_shift_reference(raw, 5, inv_freq), 9, inv_freq)
    assert torch.allclose(twice, rope_shift_reference(raw, 14, inv_freq), atol=1e-5)


@needs_triton
def test_triton_shift_equals_the_reference():
    from ragline.kernels.rope_shift_triton import rope_shift_triton

    keys = torch.randn(2, 3, 17, 24)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 8) / 8))  # 16 of 24 dimensions rotary
    assert torch.allclose(rope_shift_triton(keys, 123, inv_freq), rope_shift_reference(keys, 123, inv_freq), atol=1e-5)


def test_models_and_rope_types_that_cannot_be_shifted_are_refused():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50))
    with pytest.raises(RaglineError, match="'gpt2'"):
        rotary_frequencies(gpt2)
    dynamic = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, rope_parameters={
                                               "rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}))
    with pytest.raises(RaglineError, match="'dynamic'"):
        rotary_frequencies(dynamic)
    with pytest.raises(RaglineError, match="empty block"):
        prefill_block(tiny_model("llama"), [])


# -- the store --------------------------------------------------------------------------------------

def test_store_evicts_least_recently_used_within_its_byte_budget():
    from ragline.generators.kv_reuse.block_store import BlockStore

    model = tiny_model("llama")
    blocks = {i: prefill_block(model, ids) for i, ids in enumerate(random_blocks([8, 8, 8]))}
    store = BlockStore("tiny", memory_bytes=int(2.5 * blocks[0].nbytes))
    for i in (0, 1, 0, 2):  # 1 is then the least recently used
        store.get_or_compute(blocks[i].token_ids, lambda i=i: blocks[i])
    assert store.stats["evictions"] == 1 and store.stats["memory_hits"] == 1
    assert store.bytes_held == 2 * blocks[0].nbytes
    store.get_or_compute(blocks[1].token_ids, lambda: blocks[1])
    assert store.stats["misses"] == 4


def test_disk_tier_survives_a_restart_and_discards_corrupt_or_foreign_entries(tmp_path):
    from ragline.generators.kv_reuse.block_store import BlockStore, block_key

    model = tiny_model("qwen2")
    ids = random_blocks([9])[0]
    block = prefill_block(model, ids)
    BlockStore("qwen-tiny", directory=tmp_path).get_or_compute(ids, lambda: block)

    restarted = BlockStore("qwen-tiny", directory=tmp_path)
    again = restarted.get_or_compute(ids, lambda: pytest.fail("should come from disk"))
    assert restarted.stats["disk_hits"] == 1
    assert all(torch.equal(a, b) for a, b in zip(again.keys, block.keys))

    other_model = BlockStore("another-model", directory=tmp_path)
    other_model.get_or_compute(ids, lambda: block)
    assert other_model.stats["misses"] == 1  # another model id is another key

    path = restarted._path(block_key("qwen-tiny", ids))
    path.write_bytes(path.read_bytes()[:100])  # truncated, as after a crash mid-copy
    fresh = BlockStore("qwen-tiny", directory=tmp_path)
    fresh.get_or_compute(ids, lambda: block)
    assert fresh.stats["discarded"] == 1 and fresh.stats["misses"] == 1


# -- the generate stage -----------------------------------------------------------------------------

def test_generate_stage_in_block_mode_answers_as_the_block_diagonal_forward_and_reuses(tiny_lm):
    from ragline.engine.pipeline import Pipeline
    from ragline.generators.generate import Generate
    from ragline.generators.kv_reuse.block_prompt import block_prompt

    stage = Generate(model=tiny_lm, passages=3, max_new_tokens=6, options={"device": "cpu"}, kv_reuse="block")
    first = Pipeline([stage]).run([query(passages())])[0]
    note = first.trace[-1].extra
    assert note["misses"] == 7 and note["memory_hits"] == 0  # prefix + 3 numbers + 3 passages
    assert note["cache_bytes"] > 0

    # The same passages in another order, for another question: every block is already cached.
    second = Pipeline([stage]).run([query(passages()[::-1], "Which river flows through Paris?")])[0]
    assert second.trace[-1].extra["misses"] == 0 and second.trace[-1].extra["memory_hits"] == 7

    prompt = block_prompt(stage.backend.tokenizer, stage.prompts, first.text, first.passages)
    model = stage.backend.lm
    pieces = [prompt.prefix] + prompt.blocks
    expected, tail = [], list(prompt.final)
    for _ in range(6):
        expected.append(int(masked_logits(model, pieces, tail)[-1].argmax()))
        tail.append(expected[-1])
    answer_ids = stage.backend.tokenizer(first.answer.text, add_special_tokens=False).input_ids
    assert stage.backend.tokenizer.decode(expected, skip_special_tokens=True).strip() == first.answer.text
    assert answer_ids  # the tiny model says something


def test_sink_mode_runs_and_kv_reuse_is_validated(tiny_lm):
    from ragline.engine.pipeline import Pipeline
    from ragline.generators.generate import Generate

    stage = Generate(model=tiny_lm, passages=3, max_new_tokens=4, options={"device": "cpu"}, kv_reuse="sink",
                     kv_options={"sink_tokens": 4})
    result = Pipeline([stage]).run([query(passages())])[0]
    assert result.trace[-1].extra["kv_reuse"] == "sink" and result.answer is not None
    assert Generate(**stage.to_config()).to_config() == stage.to_config()
    with pytest.raises(ConfigError, match=r"generate: kv_reuse: input should be 'none', 'full', 'block', 'sink' or 'blend'"):
        Generate(kv_reuse="sometimes")
    with pytest.raises(ConfigError, match="hf backend"):
        Generate(backend="http", kv_reuse="block")


def test_stable_prefix_shows_the_same_passages_in_one_order():
    from ragline.generators.generate import Generate

    stage = Generate(passages=3, stable_prefix=True)
    one = stage.conversation(query(passages()))
    other = stage.conversation(query(passages()[::-1]))
    assert one == other
    assert Generate(**stage.to_config()).stable_prefix is True


def test_the_vllm_backend_shows_passages_in_a_canonical_order_unless_a_stage_ordered_them():
    from ragline.engine.types import StageTrace
    from ragline.generators.generate import Generate

    vllm, hf = Generate(backend="vllm", passages=3), Generate(passages=3)
    assert vllm.conversation(query(passages())) == vllm.conversation(query(passages()[::-1]))
    assert hf.conversation(query(passages())) != hf.conversation(query(passages()[::-1]))
    ordered = [query(p) for p in (passages(), passages()[::-1])]
    for q in ordered:
        q.trace.append(StageTrace("attnrank", 0.1, 1, 3, 3))
    assert vllm.conversation(ordered[0]) != vllm.conversation(ordered[1])
    assert Generate(backend="vllm", passages=3, stable_prefix=False).conversation(query(passages()[::-1])) \
        != vllm.conversation(query(passages()[::-1]))


def test_store_is_safe_under_concurrent_readers(tmp_path):
    import threading

    from ragline.generators.kv_reuse.block_store import BlockStore

    model = tiny_model("llama")
    blocks = [prefill_block(model, ids) for ids in random_blocks([6, 7, 8, 9])]
    store = BlockStore("tiny", memory_bytes=3 * blocks[0].nbytes, directory=tmp_path)
    failures = []

    def reader(offset: int) -> None:
        try:
            for step in range(40):
                block = blocks[(step + offset) % 4]
                got = store.get_or_compute(block.token_ids, lambda b=block: b)
                assert got.token_ids == block.token_ids and got.length == block.length
        except Exception as err:  # collected: an assertion in a thread would not fail the test
            failures.append(err)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert store.bytes_held <= 3 * blocks[0].nbytes + blocks[-1].nbytes


def test_a_context_without_kept_ranges_is_answered_without_reuse(tiny_lm):
    """A stage that writes only context text (no ``Query.kept``) cannot be
    sliced out of cached passages; compressors' contexts can (test_pruned_cache)."""
    from ragline.engine.pipeline import Pipeline
    from ragline.generators.generate import Generate

    compressed = query(passages())
    compressed.context = "[1] Paris\nParis is the capital of France."
    stage = Generate(model=tiny_lm, passages=3, max_new_tokens=3, options={"device": "cpu"}, kv_reuse="block")
    result = Pipeline([stage]).run([compressed])[0]
    assert result.trace[-1].extra["kv_reuse"] == "skipped: a context without kept ranges"
    assert result.answer is not None and stage.reuse.store.stats["misses"] == 0


@pytest.mark.parametrize("kind", ["llama", "llama3-scaled"])
def test_sink_block_keys_equal_the_model_own_rope_at_positions_from_zero(kind):
    """A block prefilled after an attention sink is stored as if it started at
    position 0. Reference, independent of the shift kernel: the layer's own
    pre-RoPE keys from the same forward, rotated by the model's own rotary
    embedding at positions 0..l-1."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = tiny_model(kind)
    sink, block = [5, 6, 7, 8], [20, 21, 22, 23, 24, 25]
    raw_keys = {}

    def keep_raw_keys(layer):
        def hook(module, inputs, output):
            raw_keys[layer] = output
        return hook

    handles = [layer.self_attn.k_proj.register_forward_hook(keep_raw_keys(i))
               for i, layer in enumerate(model.model.layers)]
    try:
        cached = prefill_block(model, block, sink_ids=sink)
    finally:
        for handle in handles:
            handle.remove()

    head_dim = model.config.hidden_size // model.config.num_attention_heads
    positions = torch.arange(len(block))[None]
    for layer, keys in enumerate(cached.keys):
        raw = raw_keys[layer][:, len(sink):]  # (1, l, kv_heads * head_dim), the block's part
        raw = raw.view(1, len(block), -1, head_dim).transpose(1, 2)
        cos, sin = model.model.rotary_emb(raw, positions)
        expected, _ = apply_rotary_pos_emb(raw, raw, cos, sin)
        torch.testing.assert_close(keys, expected, rtol=0, atol=1e-5)
    assert cached.length == len(block)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("sink", [(), (5, 6, 7)])
def test_blocks_prefilled_together_equal_blocks_prefilled_alone(kind, sink, monkeypatch):
    """Right-padded batches of similar lengths (numbers of a few tokens,
    passages of ~40; Gemma 3's window is shorter than the passages): each
    block's keys and values are those of its own forward."""
    from ragline.generators.kv_reuse import block_attention
    from ragline.generators.kv_reuse.block_attention import _similar_lengths, prefill_blocks

    monkeypatch.setattr(block_attention, "BATCHED_BELOW", 1000)  # the tiny model's "passages" batched too
    model = tiny_model(kind)
    blocks = random_blocks([3, 2, 40, 37, 3, 45, 12], seed=4)
    groups = list(_similar_lengths(sorted(range(len(blocks)), key=lambda i: len(blocks[i])), blocks))
    assert sorted(map(len, groups), reverse=True)[:2] == [3, 3]  # the short ones together, the long ones together
    together = prefill_blocks(model, blocks, sink)
    for block, ids in zip(together, blocks):
        alone = prefill_block(model, ids, sink)
        assert block.token_ids == alone.token_ids and block.stacked is not None
        for a, b in zip([*block.keys, *block.values], [*alone.keys, *alone.values]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
