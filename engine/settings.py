"""Typed stage settings.

A stage's constructor annotations are its settings schema: when a stage is
made (from Python, a YAML file or a CLI option) pydantic checks every given
argument against its annotation, so ``k: "many"``, ``k: 2.5`` or
``weights: {bm25: "x"}`` fail with one line naming the setting instead of a
traceback later. The types below add the ranges most settings need.
"""

from __future__ import annotations

import functools
import inspect
import logging
import typing
from typing import Annotated, Any

from annotated_types import Ge, Gt, Le

from ragline.engine.errors import ConfigError

log = logging.getLogger(__name__)

PositiveInt = Annotated[int, Ge(1)]
NonNegativeInt = Annotated[int, Ge(0)]
NonNegativeFloat = Annotated[float, Ge(0)]
Fraction = Annotated[float, Gt(0), Le(1)]  # (0, 1]: a share of something, never none of it
UnitInterval = Annotated[float, Ge(0), Le(1)]


def check_settings(owner: str, init, arguments: dict[str, Any]) -> None:
    """Raise ``ConfigError`` naming ``owner`` and the setting when an argument
    does not fit the constructor's annotation."""
    model = _settings_model(init)
    if model is None:
        return
    import pydantic

    checked = {name: value for name, value in arguments.items() if name in model.model_fields}
    try:
        model.model_validate(checked)
    except pydantic.ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise ConfigError(f"{owner}: {where}: {_plain_message(problem)} (got {problem['input']!r})") from None


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
    config = pydantic.ConfigDict(arbitrary_types_allowed=True)
    return pydantic.create_model(f"{init.__qualname__}.settings", __config__=config, **fields)
