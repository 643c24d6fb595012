"""The Stage contract every pipeline step follows.

A stage is configured by plain values in ``__init__`` (cheap, no model loading),
loads what it needs once in ``warm_up()``, and processes a whole batch of
queries in ``run(batch)`` so GPU stages see real batches. ``to_config()`` returns
the plain values that rebuild it, which is what a YAML pipeline file holds.
"""

from __future__ import annotations

import abc
import functools
from typing import Any, ClassVar

from ragline.engine.types import Query


class Stage(abc.ABC):
    #: The name the stage is registered under and written as in YAML.
    name: ClassVar[str]
    #: Retrievers add a list to ``Query.hits``; a pipeline with several of them
    #: needs a fusion stage to combine the lists into one ranking.
    is_retriever: ClassVar[bool] = False
    #: Fusion stages merge ``Query.hits`` into ``Query.ranking``.
    is_fusion: ClassVar[bool] = False

    _warm = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Whoever calls warm_up() (the pipeline, a user, a helper method), the
        # loading happens once per instance.
        if "warm_up" in cls.__dict__:
            cls.warm_up = _once(cls.__dict__["warm_up"])

    def warm_up(self) -> None:
        """Load models and indexes. Runs once per instance, however often called."""

    @abc.abstractmethod
    def run(self, batch: list[Query]) -> list[Query]:
        """Process every query of the batch and return the batch."""

    @abc.abstractmethod
    def to_config(self) -> dict[str, Any]:
        """Plain keyword arguments that rebuild this stage: ``type(self)(**cfg)``."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items())
        return f"{type(self).__name__}({args})"


def changed_settings(stage: Stage, defaults: dict[str, Any]) -> dict[str, Any]:
    """The stage's attributes named in ``defaults`` whose values differ from
    them: the optional part of a ``to_config`` (YAML keeps only what was set)."""
    return {name: getattr(stage, name) for name, default in defaults.items() if getattr(stage, name) != default}


def _once(warm_up):
    @functools.wraps(warm_up)
    def wrapper(self) -> None:
        if not self._warm:
            warm_up(self)
            self._warm = True

    return wrapper
