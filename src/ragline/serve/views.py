"""Results as JSON: the hits of a search, an answer with its passages and
citations. The OpenAI-compatible route puts the same answer view in its
``ragline`` field."""

from __future__ import annotations

from typing import Any

from ragline.engine.types import Query
from ragline.generators.backend import Sampling
from ragline.serve.errors import ApiError


def timings(query: Query) -> list[dict[str, Any]]:
    """Per stage: seconds of its batch, batch size, items in and out, and
    what the stage noted (time to first token, tokens, KV-cache hits)."""
    return query.to_dict()["trace"]


def search_view(query: Query) -> dict[str, Any]:
    """The query's ranking, cut to the passages fetched for it (its ``k``)."""
    by_id = {p.id: p for p in query.passages}
    hits = []
    for hit in query.ranking[: len(query.passages)]:
        passage = by_id.get(hit.id)
        hits.append({"rank": hit.rank, "id": hit.id, "score": float(hit.score), "source": hit.source,
                     "doc_id": passage.doc_id if passage else None, "title": passage.title if passage else None,
                     "text": passage.text if passage else None,
                     "metadata": passage.metadata if passage else None})
    return {"query": query.text, "hits": hits, **shards_view(query), "timings": timings(query)}


def answer_view(query: Query) -> dict[str, Any]:
    """The answer, the passages the prompt showed (numbered as in the
    prompt, ``cited`` where the answer cites them), the citations alone,
    token usage and timings."""
    cited = query.answer.cited if query.answer else []
    passages = [{"number": n, "id": p.id, "doc_id": p.doc_id, "title": p.title, "text": p.text, "cited": p.id in cited,
                 "metadata": p.metadata} for n, p in enumerate(query.passages, 1)]
    number = {p["id"]: p["number"] for p in passages}
    citations = [{"number": number[pid], "id": pid, "title": passages[number[pid] - 1]["title"]}
                 for pid in cited if pid in number]
    return {"answer": query.answer.text if query.answer else "", "citations": citations, "passages": passages,
            **shards_view(query), "usage": usage(query), "timings": timings(query)}


def shards_view(query: Query) -> dict[str, Any]:
    """``partial``: whether shards of a sharded index did not answer (their
    numbers then in ``missing_shards``): the hits are the other shards' only."""
    missing = query.missing_shards()
    return {"partial": True, "missing_shards": missing} if missing else {"partial": False}


def refuse_partial(queries: list[Query]) -> None:
    """For a request that asked for whole results only (``allow_partial: false``):
    a 503 naming the shards that did not answer."""
    missing = sorted({n for query in queries for n in query.missing_shards()})
    if missing:
        raise ApiError(503, f"shard(s) {', '.join(map(str, missing))} of the index did not answer, and the request asked for whole "
                            "results only (allow_partial: false)", param="allow_partial", headers={"Retry-After": "1"})


def usage(query: Query) -> dict[str, int]:
    generated = _generation_notes(query)
    prompt = int(generated.get("prompt_tokens") or 0)
    completion = int(generated.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(query: Query, sampling: Sampling) -> str:
    """OpenAI's: "length" when the answer used every token it was allowed."""
    return "length" if usage(query)["completion_tokens"] >= sampling.max_new_tokens else "stop"


def _generation_notes(query: Query) -> dict[str, Any]:
    for entry in reversed(query.trace):
        if entry.stage == "generate":
            return entry.extra
    return {}
