"""Every error the server answers, in one JSON shape (OpenAI's, so OpenAI
clients read them): ``{"error": {"message", "type", "param", "code"},
"request_id"}``. ``param`` names the field at fault, where there is one.

A failure inside a pipeline is logged with its traceback under the
request's id and answered 500; the message shown is the error's own only
for ragline's user-facing errors, whose messages are written for users.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ragline.engine.errors import RaglineError
from ragline.engine.index.filters import FilterError
from ragline.serve.batching import QueueFull

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    421: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout",
}


class ShuttingDown(Exception):
    """The server stopped waiting for this request: its shutdown timeout passed."""

    message = "the server is shutting down and stopped waiting for this request; send it again"


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}


def request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "-")


def error_body(status: int, message: str, param: str | None, rid: str) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "error"), "param": param, "code": status},
            "request_id": rid}


def internal_error(rid: str, error: BaseException, doing: str) -> ApiError:
    """The 500 for a pipeline that raised, logged with its traceback."""
    log.error("request %s: %s failed", rid, doing, exc_info=error)
    shown = str(error) if isinstance(error, RaglineError) else type(error).__name__
    return ApiError(500, f"{doing} failed: {shown} (request id {rid}; the server log has the details)")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error_body(error.status, error.message, error.param, request_id(request)),
                            status_code=error.status, headers=error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:  # unknown route, wrong method
        return JSONResponse(error_body(error.status_code, str(error.detail), None, request_id(request)),
                            status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        rid = request_id(request)
        log.error("request %s: %s %s failed", rid, request.method, request.url.path, exc_info=error)
        return JSONResponse(error_body(500, f"internal error (request id {rid}; the server log has the details)",
                                       None, rid), status_code=500)


@contextmanager
def pipeline_errors(request: Request, doing: str) -> Iterator[None]:
    """Around a pipeline call: a full queue → 429 with Retry-After, the
    request's deadline passed → 504, anything the pipeline raised → 500."""
    try:
        yield
    except ApiError:
        raise
    except QueueFull as full:
        raise ApiError(429, str(full), headers={"Retry-After": str(full.retry_after)}) from None
    except TimeoutError:
        raise ApiError(504, f"{doing} took longer than the server's request timeout") from None
    except ShuttingDown as stopping:
        raise ApiError(503, stopping.message, headers={"Retry-After": "1"}) from None
    except FilterError as error:  # found only when the store ran it (the checks before queueing passed)
        raise ApiError(422, f"filter: {error}", param="filter") from None
    except Exception as error:
        raise internal_error(request_id(request), error, doing) from None
