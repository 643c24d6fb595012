"""Generation backends by name; a backend's module is imported only when chosen
(vLLM is heavy and optional). A backend's constructor annotations are the
schema of the generate stage's ``options`` for it."""

from __future__ import annotations

import importlib
import typing
from typing import Literal

from ragline.engine.errors import ConfigError
from ragline.engine.settings import check_options
from ragline.generators.backend import GeneratorBackend

BackendName = Literal["hf", "vllm", "http"]
BACKENDS = typing.get_args(BackendName)
_CLASSES = {"hf": "ragline.generators.hf_backend:HFGenerator",
            "vllm": "ragline.generators.vllm_backend:VLLMGenerator",
            "http": "ragline.generators.http_backend:HTTPGenerator"}


def backend_class(name: str) -> type[GeneratorBackend]:
    """The class of the backend called ``name`` (importing its module)."""
    if name not in _CLASSES:
        raise ConfigError(f"unknown generation backend {name!r}; use one of {', '.join(BACKENDS)}")
    module, _, cls = _CLASSES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def check_backend_options(name: str, options: dict | None, owner: str = "generate") -> None:
    """``options`` against the constructor of the backend called ``name``:
    one line naming ``options.<key>`` for an unknown key or a bad value."""
    check_options(owner, "options", backend_class(name).__init__, options, of=f"the {name} backend", fixed=("model",))


def make_backend(name: str, model: str, **options) -> GeneratorBackend:
    """The backend called ``name`` with ``options`` checked; its module is
    imported only when chosen."""
    check_backend_options(name, options)
    return backend_class(name)(model, **options)
