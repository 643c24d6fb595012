"""docs/stages.md, generated from the stages themselves.

A stage's constructor annotations are its settings schema (``settings.py``),
so the reference of every stage and its settings is written from them: the
name it has in YAML, the class, what its docstrings say, and each setting's
type, range and default. ``make docs`` rewrites the file; a test fails when
the committed one is stale.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from annotated_types import Ge, Gt, Le, Lt

from ragline.engine.registry import STAGES, available, lookup

HEADER = """# Stage reference

Every stage a pipeline can hold, by the name it has in YAML, with its
settings: the type each must have (checked when the stage is made, from
Python, YAML or the command line), its range and its default. Generated from
the stages' own annotations by `make docs`; do not edit by hand.
"""

_BOUNDS = ((Ge, "ge", "≥"), (Gt, "gt", ">"), (Le, "le", "≤"), (Lt, "lt", "<"))


def stage_reference() -> str:
    sections = [HEADER]
    names = available(STAGES)
    sections.append("Stages: " + ", ".join(f"[`{name}`](#{name})" for name in names) + ".\n")
    for name in names:
        sections.append(_stage_section(name, lookup(STAGES, name)))
    return "\n".join(sections)


def write_reference(path: str | Path) -> None:
    Path(path).write_text(stage_reference(), encoding="utf-8")


def _stage_section(name: str, cls: type) -> str:
    lines = [f"## {name}", "", f"`{cls.__module__}.{cls.__qualname__}`", ""]
    # The class's own docstring, else its module's: never one inherited from Stage.
    summary = cls.__dict__.get("__doc__") or sys.modules[cls.__module__].__doc__
    if summary:
        summary = inspect.cleandoc(summary)
        lines += [summary.split("\n\n")[0], ""]
    rows = [f"| `{parameter.name}` | {describe(hint)} | "
            + ("required" if parameter.default is parameter.empty else f"`{parameter.default!r}`") + " |"
            for parameter, hint in settings_of(cls)]
    init = cls.__init__
    if rows:
        lines += ["| setting | type | default |", "|---|---|---|", *rows, ""]
    else:
        lines += ["No settings.", ""]
    if init.__doc__:  # the constructor's own notes on its settings, if it has any
        lines += [inspect.cleandoc(init.__doc__), ""]
    return "\n".join(lines)


def settings_of(cls: type) -> list[tuple[inspect.Parameter, Any]]:
    """Each setting of ``cls`` with its annotation: its constructor's keyword
    parameters, then — where that constructor passes ``**kwargs`` on to its
    base class — the base constructor's, down the class's bases."""
    found: list[tuple[inspect.Parameter, Any]] = []
    seen = set()
    for owner in cls.__mro__:
        init = owner.__dict__.get("__init__")
        if init is None:
            continue
        hints = typing.get_type_hints(init, include_extras=True)
        passes_on = False
        for parameter in list(inspect.signature(init).parameters.values())[1:]:
            if parameter.kind is parameter.VAR_KEYWORD:
                passes_on = True
            elif parameter.kind is not parameter.VAR_POSITIONAL and parameter.name not in seen:
                seen.add(parameter.name)
                found.append((parameter, hints.get(parameter.name, Any)))
        if not passes_on:
            break
    return found


def describe(annotation: Any) -> str:
    """An annotation as a reader would write it: ``int ≥ 0``, ``str | None``."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *metadata = typing.get_args(annotation)
        bounds = [f"{sign} {getattr(m, attribute)}" for m in metadata
                  for kind, attribute, sign in _BOUNDS if isinstance(m, kind)]
        return describe(base) + (" " + ", ".join(bounds) if bounds else "")
    if origin in (Union, types.UnionType):
        return " \\| ".join(describe(arg) for arg in typing.get_args(annotation))
    if origin is Literal:
        return " \\| ".join(f"`{value!r}`" for value in typing.get_args(annotation))
    if origin is not None:
        arguments = ", ".join(describe(arg) for arg in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{arguments}]"
    if annotation is type(None):
        return "None"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))
