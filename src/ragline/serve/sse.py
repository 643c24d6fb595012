"""A streamed answer as Server-Sent Events: the events of the stream in
order — text pieces, then the finished query or an error — whatever the
route makes of them, and the response that sends them.

Whatever ends the stream early (the client disconnecting, the deadline,
the server stopping) cancels the generation behind it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse

from ragline.serve.errors import ShuttingDown, error_body, internal_error
from ragline.serve.served_pipeline import AnswerStream
from ragline.serve.settings import ServeSettings

PING_SECONDS = 15  # a comment line now and then keeps proxies from closing a quiet stream


async def answer_events(stream: AnswerStream, request_id: str, doing: str) -> AsyncIterator[tuple[str, Any]]:
    """``("text", piece)``…, then ``("done", query)`` or ``("error", error body)``."""
    try:
        async for piece in stream.pieces():
            yield "text", piece
        yield "done", await stream.result()
    except TimeoutError:
        yield "error", error_body(504, f"{doing} took longer than the server's request timeout", None, request_id)
    except ShuttingDown as stopping:
        yield "error", error_body(503, stopping.message, None, request_id)
    except Exception as error:
        failure = internal_error(request_id, error, doing)
        yield "error", error_body(500, failure.message, None, request_id)
    finally:  # also when the client has gone (the task is cancelled) or the response is closed
        stream.cancel()


# After the shutdown timeout the server answers what it abandons with an
# error event; sse-starlette closes streams a little later, once that is sent.
SHUTDOWN_ERROR_MARGIN_S = 2.0


def event_stream(events: AsyncIterator[dict], settings: ServeSettings) -> EventSourceResponse:
    # On shutdown, streams in flight get the same time to finish as every other request.
    return EventSourceResponse(events, ping=PING_SECONDS,
                               shutdown_grace_period=settings.shutdown_timeout_s + SHUTDOWN_ERROR_MARGIN_S)
