"""A streamed answer's text, from the worker thread that generates it to the
request's event loop, and the way back to stop it.

The generator calls ``TextChannel.send`` with each new piece of text; once
the request has gone (client disconnected, timed out, server stopping)
``send`` raises ``GenerationCancelled``, which propagates out of the
model's generation loop and ends it at the next token.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence


class GenerationCancelled(Exception):
    """Raised inside generation to stop it: nobody is reading the answer."""


class TextChannel:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._pieces: asyncio.Queue[str | None] = asyncio.Queue()
        self._cancelled = threading.Event()
        self.pieces_sent = 0

    # -- the worker thread's side ----------------------------------------------------
    def send(self, piece: str) -> None:
        if self._cancelled.is_set():
            raise GenerationCancelled()
        self.pieces_sent += 1
        self._loop.call_soon_threadsafe(self._pieces.put_nowait, piece)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    # -- the event loop's side -----------------------------------------------------------
    def cancel(self) -> None:
        self._cancelled.set()

    def close(self) -> None:
        """No more text will come (the generation ended, one way or another)."""
        self._pieces.put_nowait(None)

    async def receive(self) -> str | None:
        """The next piece, or None once closed and drained."""
        return await self._pieces.get()


class StopFilter:
    """Makes streamed pieces add up to the final answer, which is cut before
    the first stop string: text that may be the start of a stop string is
    held back until it is known not to be, and nothing from a stop on is let
    through. (The model stops on stop strings too, but streams them first.)"""

    def __init__(self, stop: Sequence[str]):
        self.stop = [s for s in stop if s]
        self.stopped = False
        self._held = ""

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        text = self._held + piece
        found = [i for i in (text.find(s) for s in self.stop) if i != -1]
        if found:
            self.stopped = True
            self._held = ""
            return text[: min(found)]
        keep = max((n for s in self.stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What was held back, once the stream has ended without a stop."""
        held, self._held = ("" if self.stopped else self._held), ""
        return held
