"""Retrieval heads: the probe restricted to chosen heads, the retrieval score,
needle tasks, the profile (made, saved, refused for another model), the
command, and ICR reading only the chosen heads."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ragline.engine.errors import ConfigError, InputError, RaglineError
from ragline.engine.lm.attention_probe import AttentionProbe, span_ids_from_ranges
from ragline.engine.types import Passage
from ragline.rerankers.retrieval_head_detection import copy_recall, detect_retrieval_heads, needle_tasks, retrieval_hits
from ragline.rerankers.retrieval_heads import RetrievalHeads

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

DOCUMENTS = [
    "The Seine is a river that flows through Paris before it reaches the English Channel at Le Havre. It is long.",
    "Mount Everest is the highest mountain above sea level and stands on the border of Nepal and China.",
    "Tea is grown in India, China and Kenya, and most of it is drunk with milk in the United Kingdom.",
    "The Eiffel Tower was finished in 1889 as the entrance arch to the World's Fair held in Paris.",
    "Bananas are the fruit of large herbs and are grown in tropical regions all over the world today.",
    "The violin has four strings tuned in perfect fifths and is the smallest member of its family.",
]
# Pairs out of order, across key/value groups, several in one layer.
PAIRS = [(2, 3), (0, 1), (0, 0), (1, 2), (2, 0)]


QUESTION = "Which river flows through Paris?"


def passages() -> list[Passage]:
    """Short: the tiny model's 256-token window holds them whole."""
    texts = ["Paris is the capital of France.", "Bananas are yellow.", "The Seine flows through Paris.", "Tea is grown in India."]
    return [Passage(f"p{i}", f"d{i}", text, f"Title {i}") for i, text in enumerate(texts)]


def tiny_model(kind: str):
    """A random 3-layer model with grouped-query attention (Gemma 3: sliding and global layers)."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig

    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if kind == "gemma3":
        config = Gemma3TextConfig(**common, head_dim=16, sliding_window=8, query_pre_attn_scalar=24,
                                  layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    else:
        config = LlamaConfig(**common)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def tiny(tiny_lm):
    from ragline.engine.lm.causal_lm import load_causal_lm

    return load_causal_lm(tiny_lm, device="cpu", dtype="float32")


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_probe_of_chosen_heads_equals_the_full_probe_restricted_to_them(kind, backend):
    sdpa = tiny_model(kind)
    input_ids = torch.randint(0, 128, (2, 40))
    mask = torch.ones_like(input_ids)
    mask[1, :6] = 0
    span_ids = span_ids_from_ranges([(0, 5), (5, 12), (12, 30), (33, 38)], 40)
    probe = AttentionProbe(sdpa, backend=backend, key_chunk=16)
    full = probe.run(input_ids, span_ids, query_positions=[20, 39], attention_mask=mask)
    chosen = probe.run(input_ids, span_ids, query_positions=[20, 39], attention_mask=mask, heads=PAIRS)
    assert chosen.attention.shape == (len(PAIRS), 2, 1, 2, 4)
    expected = torch.stack([full.attention[layer, :, head] for layer, head in PAIRS]).unsqueeze(2)
    assert torch.allclose(chosen.attention, expected, atol=1e-6)
    assert torch.equal(chosen.span_lengths, full.span_lengths)


def test_probe_refuses_heads_it_cannot_read():
    probe = AttentionProbe(tiny_model("llama"))
    ids, spans = torch.randint(0, 128, (1, 10)), torch.zeros(10, dtype=torch.long)
    for heads, message in [([(0, 4)], "does not exist"), ([(3, 0)], "does not exist"), ([(0, 1), (0, 1)], "twice"),
                           ([], "no \\(layer, head\\)")]:
        with pytest.raises(RaglineError, match=message):
            probe.run(ids, spans, heads=heads)
    with pytest.raises(RaglineError, match="not both"):
        probe.run(ids, spans, layers=[0], heads=[(0, 0)])


def test_retrieval_score_counts_copies_from_the_needle():
    prompt = torch.tensor([9, 8, 7, 6, 5, 11, 12, 13, 14, 4, 13, 2])
    needle = (5, 9)  # tokens 11 12 13 14
    generated = torch.tensor([11, 12, 13, 14])
    top = torch.zeros((2, 3, 4), dtype=torch.long)
    top[1, 2] = torch.tensor([5, 6, 7, 8])  # a copying head: on the needle token being written, each step
    top[0, 0] = torch.tensor([5, 5, 5, 5])  # stuck on the needle's first token: right once
    top[0, 1] = torch.tensor([5, 6, 10, 8])  # token 13 also outside the needle: that look does not count
    top[1, 0] = torch.tensor([6, 7, 8, 9])  # in the needle, one token off: never a copy
    scores = retrieval_hits(top, generated, prompt, needle)
    expected = torch.zeros((2, 3), dtype=torch.float64)
    expected[1, 2], expected[0, 0], expected[0, 1] = 1.0, 0.25, 0.75
    assert torch.equal(scores, expected)
    assert copy_recall('The sentence is: "the Seine flows"', "The Seine flows, through Paris") == pytest.approx(3 / 5)


def test_needle_tasks_hide_a_real_sentence_in_real_text(tiny):
    _, tokenizer = tiny
    tasks = list(needle_tasks(tokenizer, DOCUMENTS, samples=3, min_tokens=40, max_tokens=120, seed=1))
    assert len(tasks) == 3
    for task in tasks:
        start, end = task.needle
        assert task.sentence in tokenizer.decode(task.prompt_ids[start:end])
        assert any(task.sentence in d for d in DOCUMENTS)
        assert tokenizer.decode(task.prompt_ids).count(task.sentence) == 1  # its own document is not in the haystack
    assert len(tasks[0].prompt_ids) < len(tasks[-1].prompt_ids)
    with pytest.raises(InputError, match="needle"):
        next(needle_tasks(tokenizer, ["Too short."], 1, 10, 20))


def test_detection_writes_a_well_formed_profile(tiny, tiny_lm, tmp_path):
    model, tokenizer = tiny
    # A random model copies nothing: count every task (min_recall 0) to exercise the scoring.
    profile = detect_retrieval_heads(model, tokenizer, tiny_lm, DOCUMENTS, samples=2, min_tokens=40, max_tokens=80,
                                     top=3, min_recall=0.0, backend="torch")
    assert (profile.layers, profile.heads) == (2, 4)
    scores = np.array(profile.scores)
    assert scores.shape == (2, 4) and (scores >= 0).all() and (scores <= 1).all()
    assert len(profile.top) == 3 and len({tuple(p) for p in profile.top}) == 3
    chosen = [scores[layer, head] for layer, head in profile.top]
    assert chosen == sorted(chosen, reverse=True) and chosen[-1] >= np.sort(scores.flatten())[-3]
    assert profile.settings["answered"] == 2 and profile.settings["samples"] == 2
    profile.save(tmp_path / "heads.json")
    assert RetrievalHeads.load(tmp_path / "heads.json") == profile
    with pytest.raises(RaglineError, match="copied none"):
        detect_retrieval_heads(model, tokenizer, tiny_lm, DOCUMENTS, samples=1, min_tokens=40, max_tokens=40,
                               min_recall=1.0, backend="torch")


@pytest.mark.slow
def test_smollm2_has_heads_that_copy(smollm2_folder):
    from ragline.engine.lm.causal_lm import load_causal_lm

    model, tokenizer = load_causal_lm(smollm2_folder, device="cpu", dtype="float32")
    profile = detect_retrieval_heads(model, tokenizer, smollm2_folder, DOCUMENTS, samples=1, min_tokens=120,
                                     max_tokens=120, top=4, backend="torch")
    assert profile.settings["answered"] == 1
    layer, head = profile.top[0]
    assert profile.scores[layer][head] > 0.5  # most of the needle copied by one head's look


def make_profile(tmp_path, model: str, top=((1, 2), (0, 1))) -> str:
    path = tmp_path / "heads.json"
    RetrievalHeads(model, 2, 4, [[0.0] * 4, [0.0] * 4], [list(p) for p in top]).save(path)
    return str(path)


def test_icr_reads_only_the_profiles_heads(tiny, tiny_lm, tmp_path):
    from ragline.engine.index.docstore import query_over
    from ragline.engine.pipeline import Pipeline
    from ragline.rerankers.icr import ICRRerank
    from ragline.rerankers.icr_prompt import CALIBRATION_QUERY, icr_prompt
    from ragline.rerankers.icr_scoring import InContextScorer
    model, tokenizer = tiny
    scores, _ = InContextScorer(model, tokenizer, backend="torch", heads=[(1, 2), (0, 1)], mask_outliers=False)(
        QUESTION, passages())
    # The same read from the full probe, restricted to those two heads.
    probe = AttentionProbe(model, backend="torch")

    def read(text):
        prompt = icr_prompt(tokenizer, text, passages())
        ids = torch.full((len(prompt.input_ids),), -1, dtype=torch.long)
        for index, (start, end) in enumerate(prompt.passage_ranges):
            ids[start:end] = index
        attention = probe.run(torch.tensor([prompt.input_ids]), ids, query_positions=prompt.query_rows).attention
        return (attention[1, 0, 2] + attention[0, 0, 1]).mean(0).double().numpy()

    assert np.allclose(scores, read(QUESTION) - read(CALIBRATION_QUERY), atol=1e-6)

    stage = ICRRerank(model=tiny_lm, depth=5, backend="torch", heads=make_profile(tmp_path, tiny_lm), device="cpu")
    result = Pipeline([stage]).run([query_over("q", QUESTION, passages())])[0]
    assert sorted(h.id for h in result.ranking) == sorted(p.id for p in passages())


def test_a_profile_of_another_model_is_refused(tiny_lm, tmp_path):
    from ragline.rerankers.icr import ICRRerank

    other = make_profile(tmp_path, "HuggingFaceTB/SmolLM2-360M-Instruct")
    with pytest.raises(ConfigError, match="measured on HuggingFaceTB/SmolLM2-360M-Instruct"):
        ICRRerank(model=tiny_lm, heads=other, device="cpu").warm_up()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "ragline-retrieval-heads/1", "model": "m", "layers": 2, "heads": 4,
                               "scores": [[0.0] * 4], "top": [[0, 0]]}))
    with pytest.raises(InputError, match="malformed"):
        RetrievalHeads.load(bad)


def test_calibrate_heads_command(tiny_lm, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(DOCUMENTS)))
    out = tmp_path / "heads.json"
    command = [sys.executable, "-m", "ragline.cli", "calibrate", "heads", "--model", tiny_lm, "--corpus", str(corpus),
               "--out", str(out), "--samples", "1", "--min-tokens", "40", "--max-tokens", "60", "--top", "2",
               "--min-recall", "0", "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "calibrated" in result.stdout and len(RetrievalHeads.load(out).top) == 2
    missing = subprocess.run(command[:-2] + ["--corpus", str(tmp_path / "nope.jsonl")], capture_output=True, text=True,
                             timeout=600)
    assert missing.returncode != 0 and "nope.jsonl" in missing.stderr
