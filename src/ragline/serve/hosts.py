"""The Host allow-list. A server on localhost without a token is reachable
from any web page the user opens, through DNS rebinding (a hostile name that
resolves to 127.0.0.1): the browser then sends that name as ``Host``. Only
the names and addresses the server is meant to be reached by are answered;
anything else gets a JSON 421 before any route runs."""

from __future__ import annotations

import json

from ragline.serve.errors import error_body
from ragline.serve.observe import new_request_id


def host_name(header: str) -> str:
    """``Host`` without its port: ``[::1]:8000`` → ``::1``, ``a.b:80`` → ``a.b``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class AllowedHosts:
    """Pure ASGI middleware: HTTP requests whose Host is not in ``hosts`` are refused."""

    def __init__(self, app, hosts: tuple[str, ...]):
        self.app = app
        self.hosts = {host_name(h) for h in hosts}
        self.any_host = "*" in self.hosts  # a server meant to be reached by any name

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if self.any_host or host_name(header) in self.hosts:
            return await self.app(scope, receive, send)
        rid = new_request_id()
        message = f"Host {header!r} is not one this server answers to (ragline serve --allowed-hosts)"
        body = json.dumps(error_body(421, message, None, rid)).encode()
        await send({"type": "http.response.start", "status": 421,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"x-request-id", rid.encode())]})
        await send({"type": "http.response.body", "body": body})
