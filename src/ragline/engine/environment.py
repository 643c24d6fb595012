"""A variable set in this process's environment for one block, then put back:
for what a library reads from the environment only while it starts (a JVM's
JAVA_HOME, the processes vLLM spawns), without changing the process for good."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def temporary_environment(name: str, value: str, replace: bool) -> Iterator[None]:
    """``name=value`` in the environment inside the block, as before after it.
    With ``replace=False`` a value already set is kept."""
    before = os.environ.get(name)
    if before is None or replace:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
