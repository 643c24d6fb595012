"""Who may call, and when: the bearer token (when the server has one) and
readiness (nothing is served before every stage is warm)."""

from __future__ import annotations

import hmac

from fastapi import Request

from ragline.serve.errors import ApiError
from ragline.serve.state import ServerState


def server_state(request: Request) -> ServerState:
    return request.app.state.ragline


def require_token(request: Request) -> None:
    expected = server_state(request).settings.api_key
    if expected is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # Constant-time comparison: response timing must not reveal how much of a guess was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                       headers={"WWW-Authenticate": "Bearer"})


def require_ready(request: Request) -> None:
    state = server_state(request)
    if not state.ready:
        raise ApiError(503, state.failure or "warming up: the pipelines are loading", headers={"Retry-After": "1"})
