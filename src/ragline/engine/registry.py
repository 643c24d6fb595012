"""Names → classes, for stages and index components.

Built-in ones are declared as entry points in pyproject.toml (groups
``ragline.stages`` and ``ragline.index_components``), so the engine finds them
without importing any stage module up front, and another installed package can
add its own. ``register`` adds one from code (user stages, tests) and
``unregister`` takes it back.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from ragline.engine.errors import ConfigError

STAGES = "ragline.stages"
INDEX_COMPONENTS = "ragline.index_components"

_registered: dict[str, dict[str, Any]] = {STAGES: {}, INDEX_COMPONENTS: {}}


def register(group: str, name: str, cls: Any) -> None:
    _registered[group][name] = cls


def unregister(group: str, name: str) -> None:
    """Forget a name added with ``register`` (entry points are not affected)."""
    _registered[group].pop(name, None)


def register_stage(name: str):
    """Class decorator that makes a stage usable by name in YAML files."""

    def decorate(cls):
        cls.name = name
        register(STAGES, name, cls)
        return cls

    return decorate


def available(group: str) -> list[str]:
    names = set(_registered[group])
    names.update(ep.name for ep in entry_points(group=group))
    return sorted(names)


def lookup(group: str, name: str) -> Any:
    if name in _registered[group]:
        return _registered[group][name]
    for ep in entry_points(group=group, name=name):
        return ep.load()
    kind = "stage" if group == STAGES else "index component"
    raise ConfigError(f"unknown {kind} {name!r}; known: {', '.join(available(group))}")
