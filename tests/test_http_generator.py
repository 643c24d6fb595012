"""The OpenAI-compatible backend against a real HTTP server on localhost."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ragline.engine.errors import RaglineError
from ragline.generators.backend import Sampling
from ragline.generators.http_backend import HTTPGenerator, ServerUnreachable

CONVERSATION = [{"role": "user", "content": "What is the capital of France?"}]


class ChatServer(ThreadingHTTPServer):
    """Answers /v1/chat/completions; ``failures`` 503s come first, ``refuse`` gives a 400."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), ChatHandler)
        self.failures = 0
        self.refuse = False
        self.stall_after_first_piece = 0.0
        self.requests: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class ChatHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):
        server: ChatServer = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        if server.failures:
            server.failures -= 1
            return self._send(503, b'{"error": "warming up"}')
        if server.refuse:
            return self._send(400, b'{"error": "max_tokens is too large"}')
        answer = f"Paris [1] (asked {body['messages'][-1]['content']!r})"
        if not body.get("stream"):
            reply = {"choices": [{"message": {"role": "assistant", "content": answer}}],
                     "usage": {"prompt_tokens": 11, "completion_tokens": 7}}
            return self._send(200, json.dumps(reply).encode())
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for piece in (answer[:5], answer[5:12], answer[12:]):
            self.wfile.write(f"data: {json.dumps({'choices': [{'delta': {'content': piece}}]})}\n\n".encode())
            self.wfile.flush()
            if server.stall_after_first_piece:
                time.sleep(server.stall_after_first_piece)
                return
        self.wfile.write(b"data: [DONE]\n\n")

    def _send(self, status: int, payload: bytes):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def server():
    chat = ChatServer()
    thread = threading.Thread(target=chat.serve_forever, daemon=True)
    thread.start()
    yield chat
    chat.shutdown()
    chat.server_close()


def test_a_batch_is_answered_in_order_with_usage_and_the_request_carries_sampling(server, monkeypatch):
    monkeypatch.setenv("RAGLINE_API_KEY", "secret")
    generator = HTTPGenerator("my-model", url=server.url, concurrency=3)
    questions = [[{"role": "user", "content": f"question {i}"}] for i in range(5)]
    results = generator.generate(questions, Sampling(max_new_tokens=9, temperature=0.5, seed=3, stop=("(",)))
    assert [r.text for r in results] == ["Paris [1]"] * 5  # cut at the stop string
    assert results[0].prompt_tokens == 11 and results[0].completion_tokens == 7
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer secret"
    assert (request["model"], request["max_tokens"], request["temperature"], request["seed"], request["stop"]) == (
        "my-model", 9, 0.5, 3, ["("])
    assert sorted(r["messages"][0]["content"] for r in server.requests) == [f"question {i}" for i in range(5)]


def test_streaming_delivers_the_text_in_pieces(server):
    pieces: list[str] = []
    result = HTTPGenerator("m", url=server.url).generate_one(CONVERSATION, Sampling(), pieces.append)
    assert len(pieces) == 3
    assert "".join(pieces) == result.text == "Paris [1] (asked 'What is the capital of France?')"
    assert 0 <= result.ttft <= result.seconds


def test_unavailable_answers_are_retried(server):
    server.failures = 2
    result = HTTPGenerator("m", url=server.url, retries=2, backoff=0.01).generate_one(CONVERSATION, Sampling())
    assert result.text.startswith("Paris") and len(server.requests) == 3


def test_a_server_that_keeps_failing_is_reported_unreachable(server):
    server.failures = 10
    with pytest.raises(ServerUnreachable, match="after 2 attempts.*HTTP 503"):
        HTTPGenerator("m", url=server.url, retries=1, backoff=0.01).generate_one(CONVERSATION, Sampling())


def test_a_refused_request_fails_at_once_with_the_servers_message(server):
    server.refuse = True
    with pytest.raises(RaglineError, match="HTTP 400.*max_tokens is too large"):
        HTTPGenerator("m", url=server.url, retries=3).generate_one(CONVERSATION, Sampling())
    assert len(server.requests) == 1


def test_no_server_at_all_is_a_clear_error():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    generator = HTTPGenerator("m", url=f"http://127.0.0.1:{port}/v1", retries=1, backoff=0.01, timeout=2)
    with pytest.raises(ServerUnreachable, match=f"127.0.0.1:{port}.*is it running"):
        generator.generate_one(CONVERSATION, Sampling())


def test_a_stream_that_breaks_after_text_was_shown_is_not_retried(server):
    server.stall_after_first_piece = 1.5
    pieces: list[str] = []
    generator = HTTPGenerator("m", url=server.url, retries=3, backoff=0.01, timeout=0.5)
    with pytest.raises(RaglineError, match="stream .* broke after 1 pieces"):
        generator.generate_one(CONVERSATION, Sampling(), pieces.append)
    assert pieces == ["Paris"] and len(server.requests) == 1  # a retry would have shown "Paris" twice
