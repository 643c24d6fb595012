"""The local server's front door: the interactive docs and the schema are off
unless asked for and then behind the token; only the hosts the server is
meant to be reached by are answered (no DNS rebinding); JSON endpoints take
JSON only (no cross-origin 'simple' form or text/plain POSTs)."""

from __future__ import annotations

import time
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient

from ragline.engine.pipeline import Pipeline
from ragline.retrievers.fusion import Fuse
from ragline.serve import ServeSettings, create_app
from ragline.serve.hosts import host_name

LOCAL = ("localhost", "127.0.0.1", "::1", "testserver")  # TestClient sends Host: testserver


def pipelines() -> dict[str, Pipeline]:
    return {"fused": Pipeline([Fuse("rrf")], top_k=0)}  # loads nothing: these tests are about the door


@contextmanager
def client(**settings):
    """A client of a ready server: warming up runs as a task after start-up,
    and until it ends every API route answers 503 whatever the request."""
    with TestClient(create_app(pipelines(), ServeSettings(allowed_hosts=LOCAL, **settings))) as http:
        deadline = time.monotonic() + 30
        while http.get("/healthz").status_code != 200:
            assert time.monotonic() < deadline, "the server did not become ready in 30 s"
            time.sleep(0.01)
        yield http


def test_docs_and_schema_are_off_by_default():
    with client() as http:
        assert http.get("/docs").status_code == 404
        assert http.get("/openapi.json").status_code == 404
        assert http.get("/redoc").status_code == 404


def test_docs_when_asked_for_are_behind_the_token():
    with client(docs=True, api_key="s3cret") as http:
        assert http.get("/openapi.json").status_code == 401
        assert http.get("/docs").status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        schema = http.get("/openapi.json", headers=auth)
        assert schema.status_code == 200 and "/v1/search" in schema.json()["paths"]
        assert "swagger" in http.get("/docs", headers=auth).text.lower()
    with client(docs=True) as http:  # no token configured: open, as the API is
        assert http.get("/openapi.json").status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.2", "localhost.evil.example"])
def test_a_foreign_host_header_is_refused_before_any_route(host):
    with client() as http:
        for method, path in (("GET", "/healthz"), ("POST", "/v1/search")):
            response = http.request(method, path, headers={"Host": host}, json={"query": "q"})
            assert response.status_code == 421, (host, path)
            error = response.json()
            assert error["error"]["code"] == 421 and host in error["error"]["message"]
            assert error["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"])
def test_local_host_headers_are_answered(host):
    with client() as http:
        assert http.get("/healthz", headers={"Host": host}).status_code == 200


def test_an_allowed_extra_host_is_answered():
    with TestClient(create_app(pipelines(), ServeSettings(allowed_hosts=(*LOCAL, "rag.internal")))) as http:
        assert http.get("/healthz", headers={"Host": "rag.internal:443"}).status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          None])
@pytest.mark.parametrize("path", ["/v1/search", "/v1/ask", "/v1/chat/completions"])
def test_json_endpoints_take_only_json(path, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    with client() as http:
        response = http.post(path, content=b'{"query": "q"}', headers=headers)
        assert response.status_code == 415, response.text
        assert "Content-Type: application/json" in response.json()["error"]["message"]


def test_a_star_answers_any_host():
    with TestClient(create_app(pipelines(), ServeSettings(allowed_hosts=("*",)))) as http:
        assert http.get("/healthz", headers={"Host": "rag.example.com"}).status_code == 200


def test_a_signal_before_the_app_started_is_harmless():
    from ragline.serve.state import ServerState

    ServerState(pipelines(), ServeSettings()).begin_shutdown()  # uvicorn's handler may run before the lifespan


def test_host_names_lose_their_port():
    assert host_name("[::1]:8000") == "::1" and host_name("Example.COM:80") == "example.com"
    assert host_name("::1") == "::1" and host_name("localhost") == "localhost"
