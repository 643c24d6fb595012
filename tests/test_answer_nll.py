"""The gold answer's log-likelihood: the transformers backend and the generate
stage against a hand computation on the tiny Llama, the KV-reuse modes, the
vLLM backend's prompt-log-probability arithmetic (vLLM faked: it does not
install here), and ``ragline eval qa`` reporting it with intervals."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import types

import pytest
import torch

from ragline.engine.index.docstore import query_over
from ragline.engine.lm.prompt_spans import prompt_ids
from ragline.engine.pipeline import Pipeline
from ragline.engine.types import Passage
from ragline.generators.generate import Generate

PASSAGES = [
    Passage("a", "a", "Paris is the capital of France. It has many museums.", "Paris"),
    Passage("b", "b", "Bananas are yellow. They grow in bunches.", "Bananas"),
    Passage("c", "c", "Berlin is the capital of Germany.", "Berlin"),
]
QUESTION = "What is the capital of France?"
CONVERSATION = [{"role": "system", "content": "Answer."}, {"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def reference(tiny_lm):
    """The tiny model and tokenizer, loaded here and not through ragline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_lm, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(tiny_lm)


def hand_nll(model, prompt: list[int], answer: list[int]) -> float:
    """Mean of -log p(answer token | everything before it), one forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + answer])).logits[0]
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    return -sum(float(logprobs[len(prompt) + i - 1, token]) for i, token in enumerate(answer)) / len(answer)


def answer_ids(tokenizer, answer: str) -> list[int]:
    return tokenizer(answer, add_special_tokens=False)["input_ids"]


def stage(tiny_lm, kv_reuse: str = "none") -> Generate:
    return Generate(model=tiny_lm, passages=3, max_new_tokens=3, system_prompt="Answer.", options={"device": "cpu"},
                    kv_reuse=kv_reuse)


def answered(generate: Generate):
    return Pipeline([generate]).run([query_over("q", QUESTION, copy.deepcopy(PASSAGES))])[0]


def test_continuation_nll_is_the_mean_negative_log_probability_of_the_answer_tokens(tiny_lm, reference):
    from ragline.generators.hf_backend import HFGenerator

    model, tokenizer = reference
    generator = HFGenerator(tiny_lm, device="cpu")
    prompt = prompt_ids(tokenizer, CONVERSATION)
    answer = answer_ids(tokenizer, "Paris, the city of light")
    assert len(answer) > 1
    assert generator.continuation_nll(prompt, answer) == pytest.approx(hand_nll(model, prompt, answer), abs=1e-5)
    assert generator.answer_nll(CONVERSATION, " Paris, the city of light ") == pytest.approx(
        hand_nll(model, prompt, answer), abs=1e-5)


def test_generate_stage_scores_the_prompt_it_answered_from(tiny_lm, reference):
    model, tokenizer = reference
    generate = stage(tiny_lm)
    query = answered(generate)
    prompt = prompt_ids(tokenizer, generate.prompts.messages(QUESTION, PASSAGES))
    assert [p.id for p in query.passages] == ["a", "b", "c"]
    assert generate.answer_nll(query, "Paris") == pytest.approx(hand_nll(model, prompt, answer_ids(tokenizer, "Paris")),
                                                                abs=1e-5)


def test_kv_reuse_full_is_the_plain_forward_and_block_differs(tiny_lm, reference):
    from ragline.generators.kv_reuse.block_prompt import block_prompt

    model, tokenizer = reference
    full = stage(tiny_lm, "full")
    query = answered(full)
    tokens = block_prompt(tokenizer, full.prompts, QUESTION, query.passages).all_ids
    expected = hand_nll(model, tokens, answer_ids(tokenizer, "Paris"))
    assert full.answer_nll(query, "Paris") == pytest.approx(expected, abs=1e-5)
    # Here the block prompt tokenises like the chat template, so no reuse scores the same.
    plain = stage(tiny_lm)
    assert tokens == prompt_ids(tokenizer, plain.prompts.messages(QUESTION, PASSAGES))
    assert plain.answer_nll(answered(plain), "Paris") == pytest.approx(expected, abs=1e-5)

    block = stage(tiny_lm, "block")
    in_blocks = block.answer_nll(answered(block), "Paris")
    # Passages that never saw each other: finite, and not the full prompt's value.
    assert math.isfinite(in_blocks) and abs(in_blocks - expected) > 1e-4


def test_http_backend_cannot_score_so_the_value_is_none():
    generate = Generate(backend="http", model="any", passages=3, options={"url": "http://127.0.0.1:9/v1"})
    query = query_over("q", QUESTION, copy.deepcopy(PASSAGES))
    generate.conversation(query)
    assert generate.answer_nll(query, "Paris") is None


def test_vllm_prompt_logprobs_arithmetic():
    from ragline.engine.errors import RaglineError
    from ragline.generators.vllm_backend import mean_answer_nll

    def position(token: int, logprob: float, top: int = 99) -> dict:
        return {token: types.SimpleNamespace(logprob=logprob), top: types.SimpleNamespace(logprob=-0.01)}

    # Prompt of 3 tokens (position 0 has nothing before it), then answer tokens 7 and 8.
    logprobs = [None, position(5, -9.0), position(6, -9.0), position(7, -1.0), position(8, -3.0)]
    assert mean_answer_nll(logprobs, 3, [7, 8]) == pytest.approx(2.0)
    with pytest.raises(RaglineError, match="lack answer token 9"):
        mean_answer_nll(logprobs, 3, [7, 9])
    with pytest.raises(RaglineError, match="no prompt log-probabilities"):
        mean_answer_nll(None, 3, [7, 8])


def test_eval_qa_reports_answer_nll_per_question_and_with_intervals(tiny_lm, hotpotqa_path, tmp_path):
    config = tmp_path / "qa.yaml"
    # One passage, cut short: the tiny model reads 256 positions.
    config.write_text(json.dumps({"stages": [{"generate": {
        "model": tiny_lm, "passages": 1, "max_passage_chars": 200, "system_prompt": "Answer.",
        "max_new_tokens": 3, "options": {"device": "cpu"}}}]}))
    result = subprocess.run([sys.executable, "-m", "ragline.cli", "eval", "qa", str(hotpotqa_path), "--limit", "4",
                             "--pipeline", str(config), "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "per_question.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    nlls = [row["answer_nll"] for row in rows]
    assert len(rows) == 4 and all(math.isfinite(x) and x > 0 for x in nlls)
    assert summary["answer_nll"] == pytest.approx(sum(nlls) / 4)
    low, high = summary["intervals"]["answer_nll"]
    assert min(nlls) <= low <= summary["answer_nll"] <= high <= max(nlls)
    assert summary["intervals"]["f1"] is not None and "generate" in summary["intervals"]["stage_seconds"]
    assert "answer_nll" in result.stdout and f"[{low:.4f}, {high:.4f}]" in result.stdout


def test_a_closed_book_answer_is_scored_after_the_prompt_without_passages(tiny_lm, reference):
    """passages=0: the pipeline must not fill passages in after the answer
    (the prompt had none), or the score would be for a prompt never used."""
    model, tokenizer = reference
    generate = Generate(model=tiny_lm, passages=0, max_new_tokens=3, system_prompt="Answer.", options={"device": "cpu"})
    result = answered(generate)
    assert result.passages == []
    prompt = prompt_ids(tokenizer, generate.prompts.messages(QUESTION, []))
    assert generate.answer_nll(result, "Paris") == pytest.approx(
        hand_nll(model, prompt, answer_ids(tokenizer, "Paris")), abs=1e-5)


def test_compressed_contexts_are_scored_by_likelihood_without_generating(tiny_lm, hotpotqa_path):
    """``score_queries``: contexts a compressor wrote, scored by the gold
    answer's NLL through a generate stage that never generates — the same
    value that stage gives after the same context."""
    from ragline.compressors.baselines import LeadingSentences
    from ragline.engine.data.hotpotqa import read_hotpotqa
    from ragline.eval.qa import candidate_pool, score_queries

    questions = [q for q in read_hotpotqa(hotpotqa_path, limit=10) if q.evidence_complete][:2]
    scorer = Generate(model=tiny_lm, passages=10, max_new_tokens=3, system_prompt="Answer.",
                      options={"device": "cpu"}, cite=False)
    compressed = Pipeline([LeadingSentences(budget=40, tokenizer=tiny_lm)]).run([candidate_pool(q) for q in questions])
    rows, summary = score_queries(questions, compressed, scorer)
    assert [r["id"] for r in rows] == [q.id for q in questions]
    assert all(r["prediction"] is None and "f1" not in r for r in rows)  # nothing was generated
    assert [r["answer_nll"] for r in rows] == [scorer.answer_nll(q, x.answer) for q, x in zip(compressed, questions)]
    full = score_queries(questions, [candidate_pool(q) for q in questions], scorer)[0]
    assert all(a["answer_nll"] != b["answer_nll"] for a, b in zip(rows, full))  # the compressed context counts
    assert summary["answer_nll"] == pytest.approx(sum(r["answer_nll"] for r in rows) / 2)
    assert all(r["support_recall"] is not None for r in rows) and summary["em"] is None
    with pytest.raises(ValueError):
        score_queries(questions, compressed[:1])
