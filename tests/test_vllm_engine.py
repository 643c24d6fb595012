"""The vllm backend on vLLM's real engine (the CPU build in the default lock,
the GPU one with the ``gpu`` extra), against the hf backend on the same
packaged models: the same greedy tokens, the same answer likelihoods, stop
strings, streaming, batching, the window, and prefix-cache hits.

Each model's engine starts once for the module (~1 min on 2 cores, eager)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from ragline.engine.errors import RaglineError
from ragline.engine.types import Sampling
from ragline.generators.backend_registry import make_backend

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed here")

PASSAGES = [
    "[1] The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, completed in 1889.",
    "[2] Mount Kilimanjaro, in Tanzania, is the highest mountain in Africa at 5,895 metres.",
    "[3] The Danube flows through ten countries, more than any other river in the world.",
]
QUESTIONS = ["In which city is the Eiffel Tower?", "How high is Mount Kilimanjaro?",
             "Which river flows through the most countries?", "When was the Eiffel Tower completed?"]
GREEDY = Sampling(max_new_tokens=24, temperature=0.0, top_p=1.0, seed=0, stop=())


def conversation(question: str) -> list[dict]:
    return [{"role": "system", "content": "Answer from the passages in a few words."},
            {"role": "user", "content": "\n".join(PASSAGES) + f"\n\nQuestion: {question}"}]


@pytest.fixture(scope="module", params=["SmolLM2-135M-Instruct", "gemma-3-270m"])
def backends(request):
    """The model's hf backend and its vLLM engine (512-token window)."""
    model = request.param
    if model == "gemma-3-270m":
        request.getfixturevalue("gemma3_folder")
    else:
        request.getfixturevalue("smollm2_folder")
    hf = make_backend("hf", model, device="cpu")
    vllm = make_backend("vllm", model, max_model_len=512)
    vllm.warm_up()
    yield hf, vllm
    vllm.close()


def test_greedy_answers_equal_the_hf_backends_token_for_token(backends):
    hf, vllm = backends
    conversations = [conversation(q) for q in QUESTIONS]
    expected = hf.generate(conversations, GREEDY)
    got = vllm.generate(conversations, GREEDY)
    assert [g.text for g in got] == [e.text for e in expected]
    assert [g.completion_tokens for g in got] == [e.completion_tokens for e in expected]
    assert [g.prompt_tokens for g in got] == [e.prompt_tokens for e in expected]
    assert all(g.ttft is not None and 0 < g.ttft <= g.seconds for g in got)


def test_answer_likelihood_from_prompt_logprobs_equals_the_hf_backends(backends):
    hf, vllm = backends
    for question, answer in zip(QUESTIONS, ["Paris", "5,895 metres", "The Danube", "In 1889"]):
        assert vllm.answer_nll(conversation(question), answer) == pytest.approx(
            hf.answer_nll(conversation(question), answer), abs=1e-3)


def test_stop_strings_cut_the_answer_as_the_hf_backend_does(backends):
    hf, vllm = backends
    stopping = Sampling(max_new_tokens=24, temperature=0.0, top_p=1.0, seed=0, stop=(".", "\n"))
    conversations = [conversation(q) for q in QUESTIONS]
    got = [g.text for g in vllm.generate(conversations, stopping)]
    assert got == [e.text for e in hf.generate(conversations, stopping)]
    assert not any("." in text or "\n" in text for text in got)


def test_streamed_pieces_make_the_answer_and_batches_answer_as_one_at_a_time(backends):
    _, vllm = backends
    pieces: list[str] = []
    streamed = vllm.generate_one(conversation(QUESTIONS[0]), GREEDY, pieces.append)
    assert len(pieces) > 1 and "".join(pieces) == streamed.text
    alone = [vllm.generate([conversation(q)], GREEDY)[0].text for q in QUESTIONS]
    assert [g.text for g in vllm.generate([conversation(q) for q in QUESTIONS], GREEDY)] == alone


def test_a_repeated_prompt_is_read_from_the_prefix_cache(backends):
    _, vllm = backends
    prompt = [conversation("Name the tower in the first passage. " + " ".join(PASSAGES) * 3)]
    first, again = vllm.generate(prompt, GREEDY)[0], vllm.generate(prompt, GREEDY)[0]
    assert again.text == first.text
    # vLLM caches whole blocks (128 tokens on a CPU) and always recomputes the last token.
    block = vllm.llm.llm_engine.vllm_config.cache_config.block_size
    assert again.prompt_tokens > 2 * block
    assert again.cached_tokens >= again.prompt_tokens - block > 0


def test_a_prompt_longer_than_the_window_is_a_clear_error(backends):
    _, vllm = backends
    long = [{"role": "user", "content": "word " * 600}]
    with pytest.raises(RaglineError, match=r"window of 512 \(max_model_len\)"):
        vllm.generate([long], GREEDY)
    with pytest.raises(RaglineError, match="exceed vLLM's window"):
        vllm.answer_nll(long, "yes")


def test_ragline_ask_answers_through_vllm_and_exits(vaswani_bm25_index, smollm2_folder):
    """As a user runs it: one process, vLLM's logs kept off stdout (the JSON
    parses), and the process exits once answered (vLLM's engine process is
    stopped at exit; it used to keep the command waiting for ever)."""
    result = subprocess.run([sys.executable, "-m", "ragline.cli", "ask", str(vaswani_bm25_index),
                             "What is the dielectric constant of ice?", "--backend", "vllm", "--retriever", "bm25",
                             "--passages", "2", "--max-new-tokens", "16", "--json"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout)
    assert answer["answer"]["text"].strip()
    generate = next(t for t in answer["trace"] if t["stage"] == "generate")
    assert generate["backend"] == "vllm" and generate["prefix_cached_tokens"] == 0
