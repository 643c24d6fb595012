"""Errors a user can act on. The CLI prints their message and exits with
``exit_code``; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from ragline.kernels.errors import KernelUnavailable


class RaglineError(Exception):
    """A failure caused by the user's input, configuration or environment."""

    exit_code = 1


class InputError(RaglineError):
    """Malformed input data; the message names the file and, when known, the line."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = str(path) if path is not None else None
        self.line = line
        if self.path and line is not None:
            where = f"{self.path}:{line}: "
        elif self.path:
            where = f"{self.path}: "
        else:
            where = ""
        super().__init__(where + message)


class ConfigError(InputError):
    """A pipeline configuration that cannot be built (unknown stage, bad parameter)."""


class IndexNotFound(RaglineError):
    """The index directory, or the component asked for, does not exist."""


class EncoderMismatch(RaglineError):
    """A dense index queried with another encoder than it was built with."""


class MissingDependency(RaglineError):
    """An optional dependency needed for what was asked is not installed."""


def user_facing_kernel(kernel: Callable) -> Callable:
    """``kernel`` with ``KernelUnavailable`` (kernels know nothing of ragline's
    errors) reported as ``MissingDependency``, so the CLI prints one line."""

    @functools.wraps(kernel)
    def call(*args, **kwargs):
        try:
            return kernel(*args, **kwargs)
        except KernelUnavailable as error:
            raise MissingDependency(str(error)) from None

    return call
