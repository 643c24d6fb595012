"""``ragline serve`` under load, against a real `ragline serve` process.

1. Search: the first ``--docs`` Vaswani abstracts indexed with BM25 and the
   packaged MiniLM (built once into ``--work``), served as a BM25 + dense +
   RRF pipeline. ``--requests`` requests at ``--concurrency``, a fifth of
   them malformed in varied ways (bad JSON, bad UTF-8, unknown fields, wrong
   types, out-of-range values, unknown pipeline, oversized body, wrong
   method, unknown route). Every good answer must equal the library's
   (``Pipeline.run`` on the same queries: same ids, same scores), every bad
   one must get its 4xx; no 5xx, no lost response, the server alive after.
2. Batching: throughput of the good requests alone, with batching on and
   off (``--max-batch 1``: one request per pipeline call), same server
   otherwise.
3. Generation: SmolLM2-135M-Instruct with ``kv_reuse: sink``, ``--gen-requests``
   questions at concurrency 8 — four Vaswani topics, each asked four ways
   that differ only in words BM25 drops (stopwords, punctuation), so they
   retrieve the same passages — and the passage KV cache's hits across
   requests, with time to first token cold and warm.

Progress (with an ETA) goes to stderr on a terminal; the last line printed
is one JSON object with the figures.

    python benchmarks/serve.py [--docs 2000] [--requests 1000] [--concurrency 32] [--work DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
VASWANI = ROOT.parent / "shared" / "data" / "vaswani"
HOST = "127.0.0.1"
SEARCH_YAML = "top_k: 10\nstages:\n  - bm25: {k: 100}\n  - dense: {k: 100}\n  - fuse: {method: rrf, k: 60, top_k: 100}\n"
QA_YAML = ("stages:\n  - bm25: {k: 3}\n  - generate: {model: SmolLM2-135M-Instruct, passages: 3, max_new_tokens: 16,"
           " kv_reuse: sink}\n")
# Ways of asking the same thing that BM25 cannot tell apart (Lucene drops these words and the punctuation).
PHRASINGS = ("{q}", "Is it {q}?", "{q}, or not?", "And {q}: is it that?")


@dataclass
class Call:
    """One HTTP request of the load and what it must get back."""

    method: str
    path: str
    body: bytes | None
    expect: int  # the status a correct server answers
    texts: tuple[str, ...] = ()  # good searches: the queries
    k: int = 10


@dataclass
class Outcome:
    status: int | None  # None: no response (lost)
    seconds: float
    body: bytes = b""


# -- the corpus, the index, the library's answers -------------------------------------------------


def build_search_index(work: Path, docs: int) -> Path:
    from ragline.engine.data.corpus import read_corpus
    from ragline.engine.index.build import build_index

    index = work / f"vaswani-{docs}"
    if (index / "meta.json").exists():
        return index
    corpus = work / f"vaswani-{docs}.jsonl"
    with corpus.open("w") as out:
        for doc in itertools.islice(read_corpus(VASWANI / "doc-text.trec"), docs):
            out.write(json.dumps({"id": doc.id, "text": doc.text}) + "\n")
    started = time.perf_counter()
    build_index(corpus, index, {"bm25": {}, "dense": {}}, progress=sys.stderr.isatty())
    log(f"indexed {docs} documents in {time.perf_counter() - started:.0f} s")
    return index


def library_rankings(config: Path, index: Path, queries: list[str]) -> dict[str, list[tuple[str, float]]]:
    """What ``Pipeline.run`` returns for each query: the reference."""
    from ragline.engine.pipeline import Pipeline

    pipeline = Pipeline.load(config, defaults={"index": str(index)})
    return {q.text: [(h.id, h.score) for h in q.ranking] for q in pipeline.run(queries)}


# -- the requests ---------------------------------------------------------------------------------------


def bad_calls(query: str) -> list[Call]:
    """Malformed requests, one of each kind, with the status each must get."""
    search = "/v1/search"
    return [
        Call("POST", search, b'{"query": "' + query.encode()[:20], 400),  # truncated JSON
        Call("POST", search, b"query=" + query.encode(), 400),  # a form, not JSON
        Call("POST", search, b'{"query": "\xff\xfe"}', 400),  # not UTF-8
        Call("POST", search, b"[]", 422),
        Call("POST", search, json.dumps({"query": query, "top": 5}).encode(), 422),  # unknown field
        Call("POST", search, json.dumps({"query": query, "k": "10"}).encode(), 422),  # wrong type
        Call("POST", search, json.dumps({"query": query, "k": 0}).encode(), 422),
        Call("POST", search, json.dumps({"query": query, "k": 100000}).encode(), 422),
        Call("POST", search, json.dumps({"query": " "}).encode(), 422),
        Call("POST", search, json.dumps({"query": 42}).encode(), 422),
        Call("POST", search, json.dumps({"query": query, "queries": [query]}).encode(), 422),
        Call("POST", search, json.dumps({"query": query * 400}).encode(), 422),  # over the question limit
        Call("POST", search, json.dumps({"query": query, "pipeline": "nope"}).encode(), 404),
        Call("POST", search, json.dumps({"query": "x" * (3 << 19)}).encode(), 413),  # 1.5 MB
        Call("GET", search, None, 405),
        Call("POST", "/v1/serch", json.dumps({"query": query}).encode(), 404),
    ]


def make_calls(queries: list[str], count: int, bad_fraction: float, seed: int = 0) -> list[Call]:
    rng = random.Random(seed)
    calls = []
    for i in range(count):
        query = queries[i % len(queries)]
        if rng.random() < bad_fraction:
            calls.append(rng.choice(bad_calls(query)))
        elif rng.random() < 0.1:  # a few ask for several queries at once
            texts = tuple(rng.sample(queries, 3))
            calls.append(Call("POST", "/v1/search", json.dumps({"queries": list(texts), "k": 5}).encode(), 200, texts, 5))
        else:
            k = rng.randint(1, 10)
            calls.append(Call("POST", "/v1/search", json.dumps({"query": query, "k": k}).encode(), 200, (query,), k))
    return calls


# -- the server ---------------------------------------------------------------------------------------------


#: OpenMP/torch threads of the server process (None: torch's default, every core).
SERVER_THREADS: int | None = None


@contextmanager
def ragline_serve(work: Path, pipelines: list[Path], index: Path, *options: str):
    """A `ragline serve` process on a free port; yields its base URL. Stopped
    with SIGTERM; its exit code is checked (a graceful stop is 0)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "ragline.cli", "serve", "--index", str(index), "--host", HOST, "--port", str(port),
               *(a for p in pipelines for a in ("--pipeline", str(p))), *options]
    logfile = (work / f"server-{port}.log").open("w")
    env = {**os.environ, "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "unused")}  # pyserini's import wants one
    if SERVER_THREADS:
        env["OMP_NUM_THREADS"] = str(SERVER_THREADS)
    process = subprocess.Popen(command, stdout=logfile, stderr=subprocess.STDOUT, env=env)
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 600
        while not _ready(base):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {logfile.name}")
            time.sleep(0.25)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        logfile.close()
        if code != 0:
            raise RuntimeError(f"the server exited {code} on SIGTERM; see {logfile.name}")


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def metric(base: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- the load ------------------------------------------------------------------------------------------------


async def load(base: str, calls: list[Call], concurrency: int, label: str) -> tuple[list[Outcome], float]:
    """Send every call, ``concurrency`` at a time; (outcomes in order, wall seconds)."""
    outcomes: list[Outcome | None] = [None] * len(calls)
    pending = iter(range(len(calls)))
    bar = tqdm(total=len(calls), desc=label, unit="req", disable=not sys.stderr.isatty(), file=sys.stderr)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        async def worker() -> None:
            for index in pending:
                call = calls[index]
                started = time.perf_counter()
                try:
                    response = await client.request(call.method, call.path, content=call.body,
                                                    headers={"content-type": "application/json"})
                    outcomes[index] = Outcome(response.status_code, time.perf_counter() - started, response.content)
                except httpx.HTTPError:
                    outcomes[index] = Outcome(None, time.perf_counter() - started)
                bar.update()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    bar.close()
    return outcomes, seconds


def check(calls: list[Call], outcomes: list[Outcome], reference: dict) -> dict:
    """Every good answer equal to the library's, every bad one its 4xx."""
    wrong, statuses = [], Counter()
    for call, outcome in zip(calls, outcomes):
        statuses[outcome.status] += 1
        if outcome.status != call.expect:
            wrong.append(f"{call.method} {call.path} {call.body[:60] if call.body else ''!r}: "
                         f"{outcome.status}, expected {call.expect}")
            continue
        if call.expect != 200:
            continue
        results = json.loads(outcome.body)["results"]
        for text, result in zip(call.texts, results):
            got = [(h["id"], h["score"]) for h in result["hits"]]
            if got != reference[text][: call.k]:
                wrong.append(f"{text!r}: {got[:3]} ... differs from the library's {reference[text][:3]} ...")
    good = [o for c, o in zip(calls, outcomes) if c.expect == 200]
    return {
        "good": len(good), "bad": len(calls) - len(good),
        "wrong": len(wrong), "examples_of_wrong": wrong[:5],
        "lost": statuses[None],
        "status_5xx": sum(n for s, n in statuses.items() if s is not None and s >= 500),
        "statuses": {str(s): n for s, n in sorted(statuses.items(), key=lambda item: str(item[0]))},
    }


def latency(outcomes: list[Outcome]) -> dict:
    seconds = sorted(o.seconds for o in outcomes)
    return {"p50_ms": round(1000 * seconds[len(seconds) // 2], 1),
            "p99_ms": round(1000 * seconds[min(len(seconds) - 1, int(0.99 * len(seconds)))], 1)}


def throughput_run(base: str, calls: list[Call], concurrency: int, label: str) -> dict:
    """Throughput and latency of ``calls``, and the batches the server made of them."""
    def batch_totals() -> tuple[float, float, float]:
        return tuple(metric(base, f"ragline_batch_{name}", operation="search")
                     for name in ("size_count", "size_sum", "seconds_sum"))

    before = batch_totals()
    outcomes, seconds = asyncio.run(load(base, calls, concurrency, label))
    batches, queries, busy = (after - earlier for after, earlier in zip(batch_totals(), before))
    return {"requests": len(calls), "throughput_rps": round(len(calls) / seconds, 1), **latency(outcomes),
            "errors": sum(o.status != 200 for o in outcomes), "batches": int(batches),
            "mean_batch": round(queries / batches, 1), "mean_batch_ms": round(1000 * busy / batches, 1),
            "worker_busy": round(busy / seconds, 2)}


# -- generation with the shared passage KV cache ------------------------------------------------------------------


async def ask_all(base: str, questions: list[str], concurrency: int) -> list[dict]:
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        async def ask(question: str) -> dict:
            async with semaphore:
                response = await client.post("/v1/ask", json={"question": question})
                response.raise_for_status()
                return response.json()

        return await asyncio.gather(*(ask(q) for q in questions))


def generation_run(work: Path, index: Path, topics: list[str], requests: int) -> dict:
    config = work / "qa.yaml"
    config.write_text(QA_YAML)
    questions = [phrasing.format(q=topic) for topic in topics for phrasing in PHRASINGS][:requests]
    with ragline_serve(work, [config], index) as base:
        started = time.perf_counter()
        answers = asyncio.run(ask_all(base, questions, concurrency=8))
        seconds = time.perf_counter() - started
        hits = metric(base, "ragline_kv_cache_hits_total")
        misses = metric(base, "ragline_kv_cache_misses_total")
        held = metric(base, "ragline_kv_cache_bytes")
    generated = [a["timings"][-1] for a in answers]
    cold = [g["ttft"] for g in generated if g.get("misses", 0) > 0]
    warm = [g["ttft"] for g in generated if g.get("misses", 0) == 0]
    passage_sets = Counter(frozenset(p["id"] for p in a["passages"]) for a in answers)
    return {
        "requests": len(questions), "concurrency": 8, "seconds": round(seconds, 1),
        "distinct_passage_sets": len(passage_sets),
        "kv_hits": int(hits), "kv_misses": int(misses), "kv_bytes": int(held),
        "requests_all_hits": len(warm),
        "ttft_cold_ms": round(1000 * statistics.median(cold), 0) if cold else None,
        "ttft_warm_ms": round(1000 * statistics.median(warm), 0) if warm else None,
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--bad", type=float, default=0.2, help="fraction of malformed requests")
    parser.add_argument("--gen-requests", type=int, default=16, help="0: skip the generation run")
    parser.add_argument("--threads", type=int, default=None,
                        help="OpenMP/torch threads of the server (default: torch's, one per core)")
    parser.add_argument("--work", type=Path, help="where the index is built (kept; reused when there); default a temp folder")
    args = parser.parse_args()

    from ragline.engine.data.topics import read_topics

    global SERVER_THREADS
    SERVER_THREADS = args.threads
    work = args.work or Path(tempfile.mkdtemp(prefix="ragline-serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    index = build_search_index(work, args.docs)
    config = work / "search.yaml"
    config.write_text(SEARCH_YAML)
    queries = [text for _, text in read_topics(VASWANI / "query-text.trec")]
    reference = library_rankings(config, index, queries)
    calls = make_calls(queries, args.requests, args.bad)
    good_calls = [c for c in calls if c.expect == 200]
    figures: dict = {"machine": f"{os.cpu_count()} CPU cores", "server_threads": args.threads or "default",
                     "docs": args.docs, "concurrency": args.concurrency}

    with ragline_serve(work, [config], index) as base:
        outcomes, seconds = asyncio.run(load(base, calls, args.concurrency, "mixed load"))
        good_latency = latency([o for c, o in zip(calls, outcomes) if c.expect == 200])
        figures["mixed"] = {"requests": len(calls), **check(calls, outcomes, reference), "alive_after": _ready(base),
                            **latency(outcomes), **{f"good_{key}": value for key, value in good_latency.items()},
                            "throughput_rps": round(len(calls) / seconds, 1)}
        figures["batching_on"] = throughput_run(base, good_calls, args.concurrency, "batching on")
    with ragline_serve(work, [config], index, "--max-batch", "1") as base:
        figures["batching_off"] = throughput_run(base, good_calls, args.concurrency, "batching off")
    figures["batching_speedup"] = round(figures["batching_on"]["throughput_rps"]
                                        / figures["batching_off"]["throughput_rps"], 2)
    if args.gen_requests:
        figures["generation"] = generation_run(work, index, queries[:4], args.gen_requests)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
