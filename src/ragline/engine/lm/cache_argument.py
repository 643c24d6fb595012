"""How to hand a model its KV cache: transformers 5.2x renamed the forward's
and generate()'s ``past_key_values`` to ``cache`` and warns at every call
with the old name; older 5.x releases know only the old one."""

from __future__ import annotations

import functools
import inspect
from typing import Any


def with_cache(model, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``model(...)`` and ``model.generate(...)``."""
    return {_cache_keyword(type(model)): cache}


@functools.cache
def _cache_keyword(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"
