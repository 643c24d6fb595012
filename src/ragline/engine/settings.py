"""Typed stage settings.

A stage's constructor annotations are its settings schema: when a stage is
made (from Python, a YAML file or a CLI option) pydantic checks every given
argument against its annotation, strictly (an integer is not a string, a
float or a boolean; a float may be written as an integer), so ``k: "many"``,
``k: 2.5``, ``k: true`` or ``weights: {bm25: "x"}`` fail with one line naming
the setting instead of a traceback later. The types below add the ranges most settings need.
"""

from __future__ import annotations

import functools
import inspect
import logging
import typing
from pathlib import PurePath
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Le

from ragline.engine.errors import ConfigError

log = logging.getLogger(__name__)

PositiveInt = Annotated[int, Ge(1)]
NonNegativeInt = Annotated[int, Ge(0)]
NonNegativeFloat = Annotated[float, Ge(0)]
PositiveFloat = Annotated[float, Gt(0)]
Fraction = Annotated[float, Gt(0), Le(1)]  # (0, 1]: a share of something, never none of it
UnitInterval = Annotated[float, Ge(0), Le(1)]
# Which attention-probe kernel a stage runs: ``auto`` picks Triton on a GPU where it is installed.
KernelChoice = Literal["auto", "torch", "triton"]


def check_settings(owner: str, init, arguments: dict[str, Any], field: str | None = None) -> None:
    """Raise ``ConfigError`` naming ``owner`` and the setting (inside ``field``,
    if the arguments are one dict setting's) when an argument does not fit the
    constructor's annotation."""
    model = _settings_model(init)
    if model is None:
        return
    import pydantic

    checked = {name: _as_written(value) for name, value in arguments.items() if name in model.model_fields}
    try:
        model.model_validate(checked)
    except pydantic.ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        where = f"{field}.{where}" if field else where
        raise ConfigError(f"{owner}: {where}: {_plain_message(problem)} (got {problem['input']!r})") from None


def check_options(owner: str, field: str, init, given: dict[str, Any] | None, *, of: str,
                  fixed: tuple[str, ...] = ()) -> None:
    """Check ``given`` (a dict setting such as ``options``, handed on as
    keyword arguments to ``init``) against ``init``'s parameters: an unknown
    key or a value that does not fit its annotation is a ``ConfigError``
    naming ``owner``, ``field`` and the key; ``of`` says whose settings they
    are ("the hf backend"). ``fixed``: parameters the caller passes itself,
    which ``given`` may not hold."""
    if not given:
        return
    known = [name for name in list(inspect.signature(init).parameters)[1:] if name not in fixed]
    for key in given:
        if key not in known:
            raise ConfigError(f"{owner}: {field}.{key}: not a setting of {of}; known: {', '.join(known)}")
    check_settings(owner, init, given, field)


def _as_written(value: Any) -> Any:
    """What a YAML file would hold for ``value``: checking is strict (``k: 2.0``
    or ``k: "10"`` is not an integer, ``true`` is not a number), but a tuple
    stands for a list and a path for a string, as they would when saved."""
    if isinstance(value, (list, tuple)):
        return [_as_written(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_written(v) for k, v in value.items()}
    if isinstance(value, PurePath):
        return str(value)
    return value


def _plain_message(problem: dict) -> str:
    message = problem["msg"]
    return message[0].lower() + message[1:] if message else "not a valid value"


@functools.cache
def _settings_model(init):
    """A pydantic model of ``init``'s annotated keyword parameters (None when
    its annotations cannot be resolved: such a stage is not checked)."""
    import pydantic

    try:
        hints = typing.get_type_hints(init, include_extras=True)
    except Exception as error:  # an annotation naming something not importable at run time
        log.debug("settings of %s are not checked: %s", init.__qualname__, error)
        return None
    fields = {}
    for name, parameter in inspect.signature(init).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        # Only the arguments given are checked (the signature itself says what
        # is required), so no field is required here.
        default = None if parameter.default is parameter.empty else parameter.default
        fields[name] = (hints.get(name, Any), default)
    config = pydantic.ConfigDict(strict=True, arbitrary_types_allowed=True)
    return pydantic.create_model(f"{init.__qualname__}.settings", __config__=config, **fields)
