"""Every HTTP request gets an id (the ``X-Request-ID`` response header;
error bodies and the server log repeat it) and is counted by route and
status, timed to its last byte, and counted while in flight.

A plain ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``,
which would buffer streamed responses and hide client disconnects from
them."""

from __future__ import annotations

import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragline.serve.metrics import ServerMetrics


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


class ObserveRequests:
    def __init__(self, app: ASGIApp, metrics: ServerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500  # what the client gets if the app raises before answering
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            # The route template, not the path: unknown paths must not make new series.
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
