"""ragline's own API: ``/v1/search``, ``/v1/ask`` (SSE with ``stream``),
``/healthz`` and ``/metrics``."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from ragline.engine.index.filters import FilterError
from ragline.serve.access import require_ready, require_token, server_state
from ragline.serve.errors import ApiError, pipeline_errors, request_id
from ragline.serve.metrics import CONTENT_TYPE
from ragline.serve.schemas import AskRequest, SearchRequest, read_request
from ragline.serve.sse import answer_events, event_stream
from ragline.serve.views import answer_view, finish_reason, refuse_partial, search_view

router = APIRouter()
api = APIRouter(dependencies=[Depends(require_token), Depends(require_ready)])


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    state = server_state(request)
    if state.ready:
        return JSONResponse({"status": "ready", "pipelines": list(state.pipelines)})
    return JSONResponse({"status": "failed" if state.failure else "warming up", "error": state.failure},
                        status_code=503, headers={"Retry-After": "1"})


@router.get("/metrics", dependencies=[Depends(require_token)])
async def metrics(request: Request) -> Response:
    return Response(server_state(request).metrics.render(), media_type=CONTENT_TYPE)


@api.post("/v1/search")
async def search(request: Request) -> JSONResponse:
    """``{query | queries, k, pipeline?}`` → each query's top ``k`` passages
    with ids, scores and text, and per-stage timings."""
    state = server_state(request)
    body = await read_request(request, SearchRequest, state.settings)
    texts = body.texts()
    served = state.pipeline(body.pipeline, "pipeline")
    checked_filter(served, body.filter)
    with pipeline_errors(request, "search"):
        queries = await served.search(texts, body.k, state.settings.request_timeout_s, body.filter)
    if not body.allow_partial:
        refuse_partial(queries)
    return JSONResponse({"pipeline": served.name, "results": [search_view(q) for q in queries]})


@api.post("/v1/ask")
async def ask(request: Request) -> Response:
    """One question → answer, citations, passages, timings; with ``stream``,
    SSE: ``token`` events (``{"text"}``), then ``done`` (the same object
    as without ``stream``) or ``error``."""
    state = server_state(request)
    body = await read_request(request, AskRequest, state.settings)
    served = state.pipeline(body.pipeline, "pipeline", generating=True)
    sampling = served.sampling(**body.overrides())
    timeout = state.settings.request_timeout_s
    checked_filter(served, body.filter)
    if not body.stream:
        with pipeline_errors(request, "answering"):
            query = await served.answer(body.question, sampling, timeout, body.filter)
        if not body.allow_partial:
            refuse_partial([query])
        return JSONResponse({"pipeline": served.name, **answer_view(query),
                             "finish_reason": finish_reason(query, sampling)})
    with pipeline_errors(request, "answering"):  # a full queue is a 429 before the stream starts
        stream = served.stream(body.question, sampling, timeout, body.filter)

    async def events():
        async for kind, value in answer_events(stream, request_id(request), "answering"):
            if kind == "text":
                yield {"event": "token", "data": json.dumps({"text": value}, ensure_ascii=False)}
            elif kind == "done":
                done = {"pipeline": served.name, **answer_view(value), "finish_reason": finish_reason(value, sampling)}
                yield {"event": "done", "data": json.dumps(done, ensure_ascii=False)}
            else:
                yield {"event": "error", "data": json.dumps(value, ensure_ascii=False)}

    return event_stream(events(), state.settings)


def checked_filter(served, query_filter: str | None) -> None:
    """A 422 naming ``filter`` when a retriever of the pipeline cannot apply it
    (an unknown field, a value of the wrong kind)."""
    if query_filter is None:
        return
    try:
        served.check_filter(query_filter)
    except FilterError as error:
        raise ApiError(422, f"filter: {error}", param="filter") from None


def docs_router(app) -> APIRouter:
    """``/openapi.json`` and ``/docs`` (``ragline serve --docs``), behind the token like the API."""
    from fastapi.openapi.docs import get_swagger_ui_html

    docs = APIRouter(dependencies=[Depends(require_token)], include_in_schema=False)

    @docs.get("/openapi.json")
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @docs.get("/docs")
    async def swagger() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="ragline")

    return docs
