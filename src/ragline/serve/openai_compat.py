"""OpenAI's chat API over ragline pipelines: ``GET /v1/models`` lists the
pipelines, ``POST /v1/chat/completions`` answers the last user message with
the pipeline its ``model`` names, streamed as ``chat.completion.chunk``
events when asked. Earlier messages are not part of the question (the
pipeline's own prompt shows the passages). The answer's passages and
citations travel in an extra ``ragline`` field, which OpenAI clients keep
(``model_extra``) and ignore."""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from ragline.serve.access import require_ready, require_token, server_state
from ragline.serve.errors import pipeline_errors, request_id
from ragline.serve.schemas import ChatRequest, read_request
from ragline.serve.sse import answer_events, event_stream
from ragline.serve.views import answer_view, finish_reason, usage

router = APIRouter(dependencies=[Depends(require_token), Depends(require_ready)])


@router.get("/v1/models")
async def models(request: Request) -> JSONResponse:
    state = server_state(request)
    return JSONResponse({"object": "list", "data": [
        {"id": name, "object": "model", "created": state.started_at, "owned_by": "ragline",
         "ragline": {"generates": served.generates, "stages": [s.name for s in served.pipeline.stages]}}
        for name, served in state.pipelines.items()]})


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    state = server_state(request)
    body = await read_request(request, ChatRequest, state.settings)
    served = state.pipeline(body.model, "model", generating=True)
    sampling = served.sampling(**body.overrides())
    timeout = state.settings.request_timeout_s
    completion = {"id": f"chatcmpl-{request_id(request)}", "created": int(time.time()), "model": served.name}
    if not body.stream:
        with pipeline_errors(request, "answering"):
            query = await served.answer(body.question(), sampling, timeout)
        return JSONResponse({
            **completion, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": query.answer.text},
                         "finish_reason": finish_reason(query, sampling)}],
            "usage": usage(query), "ragline": answer_view(query)})
    with pipeline_errors(request, "answering"):  # a full queue is a 429 before the stream starts
        stream = served.stream(body.question(), sampling, timeout)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(delta: dict, finish: str | None = None, **extra) -> dict:
        data = {**completion, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return {"data": json.dumps(data, ensure_ascii=False)}

    async def events():
        yield chunk({"role": "assistant", "content": ""})
        async for kind, value in answer_events(stream, request_id(request), "answering"):
            if kind == "text":
                yield chunk({"content": value})
            elif kind == "done":
                yield chunk({}, finish_reason(value, sampling), ragline=answer_view(value))
                if include_usage:
                    yield {"data": json.dumps({**completion, "object": "chat.completion.chunk", "choices": [],
                                               "usage": usage(value)})}
            else:
                yield {"data": json.dumps(value, ensure_ascii=False)}  # OpenAI clients raise on {"error": ...}
        yield {"data": "[DONE]"}

    return event_stream(events(), state.settings)
