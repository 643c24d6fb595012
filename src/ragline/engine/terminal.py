"""Where commands write for people: one console for results (stdout), one for
messages (stderr).

On a terminal rich fits text to the window. Anywhere else (a pipe, a file, a
test) nothing is wrapped: scripts read ragline's output line by line, and a
line break in the middle of a message would depend on the length of a path."""

from __future__ import annotations

import functools
import sys

from rich.console import Console

# Wide enough that no table or message is folded, small enough that rich's
# layout arithmetic stays cheap.
_UNWRAPPED_WIDTH = 10_000


@functools.cache
def stdout() -> Console:
    return _console(stderr=False)


@functools.cache
def stderr() -> Console:
    return _console(stderr=True)


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, soft_wrap=True, width=_UNWRAPPED_WIDTH)
