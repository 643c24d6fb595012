"""The Stage contract every pipeline step follows.

A stage is configured by plain values in ``__init__`` (cheap, no model loading),
loads what it needs once in ``warm_up()``, and processes a whole batch of
queries in ``run(batch)`` so GPU stages see real batches.

``to_config()`` is not written by hand: the arguments a stage was constructed
with are recorded as it is made (as Haystack's components record theirs), and
the saved config is those that differ from the constructor's defaults. A YAML
file therefore always says exactly what rebuilds the stage, and cannot drift
from ``__init__``. The same record is checked against the constructor's
annotations (``settings.py``), so a bad value fails when the stage is made.
"""

from __future__ import annotations

import abc
import copy
import functools
import inspect
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from ragline.engine.settings import check_settings
from ragline.engine.types import Query


class Stage(abc.ABC):
    """One step of a pipeline. How a stage is built:

    - Subclassing wraps the subclass's own ``__init__`` (``__init_subclass__``):
      before the body runs, the arguments are checked against the
      constructor's annotations (``settings.py``: the annotations are the
      schema; a rule spanning several settings stays in the body and raises
      ``ConfigError``), and the outermost constructor records them — that
      record is ``to_config()``.
    - It wraps ``warm_up`` too: loading runs once per instance however often
      it is called, under one lock, and runs again after a failure.
    - ``run(batch)`` does the work for a whole batch; ``run_streaming`` is
      the same for a caller that wants text as it is written.
    """

    #: The name the stage is registered under and written as in YAML.
    name: ClassVar[str]
    #: Retrievers add a list to ``Query.hits``; a pipeline with several of them
    #: needs a fusion stage to combine the lists into one ranking.
    is_retriever: ClassVar[bool] = False
    #: Fusion stages merge ``Query.hits`` into ``Query.ranking``.
    is_fusion: ClassVar[bool] = False
    #: Generating stages write ``Query.answer``; the stages before the first
    #: of them are the pipeline's retrieval part (what a search runs).
    is_generator: ClassVar[bool] = False
    #: Stages that choose the order passages are shown in (AttnRank,
    #: attention sorting): a generator keeps that order rather than a canonical one.
    orders_passages: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording_arguments(cls.__dict__["__init__"])
        # Whoever calls warm_up() (the pipeline, a user, a helper method), the
        # loading happens once per instance, and again after a failure.
        if "warm_up" in cls.__dict__:
            cls.warm_up = _once(cls.__dict__["warm_up"])

    def warm_up(self) -> None:
        """Load models and indexes. Runs once per instance, however often called;
        a warm-up that raised runs again (and fails again) on the next call."""

    @abc.abstractmethod
    def run(self, batch: list[Query]) -> list[Query]:
        """Process every query of the batch and return the batch."""

    def run_streaming(self, batch: list[Query], on_text: Callable[[Query, str], None]) -> list[Query]:
        """``run``, for a caller that wants text as it is written: a stage that
        writes text (generation) calls ``on_text(query, piece)`` with each new
        piece; any other stage simply runs."""
        return self.run(batch)

    def generator_prompt(self) -> dict[str, Any] | None:
        """For stages that read or write the generator's prompt (attention
        reordering, generation): the settings that must agree across the
        pipeline — ``model`` (canonical id; it fixes the chat template),
        ``system_prompt``, ``cite``. ``Pipeline`` checks them once, when built."""
        return None

    def to_config(self, with_defaults: bool = False) -> dict[str, Any]:
        """Plain keyword arguments that rebuild this stage: ``type(self)(**cfg)``.
        Only those that differ from the defaults, unless ``with_defaults`` (for
        reports that must say every setting a result was produced with)."""
        recorded = self.__dict__.get("_init_arguments", ({}, {}))
        return copy.deepcopy(recorded[1] if with_defaults else recorded[0])

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items())
        return f"{type(self).__name__}({args})"


def _recording_arguments(init):
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        # Every constructor in the chain checks its own arguments; the
        # outermost one records them, and a subclass's super().__init__() call
        # finds the record made and leaves it alone.
        bound = signature.bind(self, *args, **kwargs)
        check_settings(getattr(self, "name", type(self).__name__), init, dict(list(bound.arguments.items())[1:]))
        if "_init_arguments" not in self.__dict__:
            changed = _settings(signature, bound)
            bound.apply_defaults()
            self._init_arguments = (changed, _settings(signature, bound, keep_defaults=True))
        init(self, *args, **kwargs)

    return wrapper


def _settings(signature: inspect.Signature, bound: inspect.BoundArguments, keep_defaults: bool = False) -> dict[str, Any]:
    """The bound arguments that differ from their defaults (or all of them), as
    plain YAML values; everything passed through ``**kwargs`` counts as set."""
    settings: dict[str, Any] = {}
    for name, value in list(bound.arguments.items())[1:]:  # [0] is self
        parameter = signature.parameters[name]
        if parameter.kind is parameter.VAR_KEYWORD:
            settings.update({key: _plain(v) for key, v in value.items()})
        elif parameter.kind is parameter.VAR_POSITIONAL:
            raise TypeError("stage constructors take keyword settings, not *args")
        elif keep_defaults or parameter.default is parameter.empty or value != parameter.default:
            settings[name] = _plain(value)
    return settings


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return copy.deepcopy(value)


# Warm-ups run one at a time (they load models; running two at once only
# competes for memory), and never twice for one stage when threads race.
_warm_up_lock = threading.RLock()


def _once(warm_up):
    @functools.wraps(warm_up)
    def wrapper(self) -> None:
        # One flag per class in the chain: a subclass's warm_up calling
        # super().warm_up() must not mark the subclass warm before its own
        # loading has succeeded.
        done = self.__dict__.setdefault("_warmed", set())
        if warm_up.__qualname__ in done:
            return
        with _warm_up_lock:
            if warm_up.__qualname__ not in done:
                warm_up(self)
                done.add(warm_up.__qualname__)

    return wrapper
