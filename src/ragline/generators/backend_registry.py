"""Generation backends by name; a backend's module is imported only when chosen
(vLLM is heavy and optional)."""

from __future__ import annotations

from ragline.engine.errors import ConfigError
from ragline.generators.backend import GeneratorBackend

BACKENDS = ("hf", "vllm", "http")


def make_backend(name: str, model: str, **options) -> GeneratorBackend:
    """The backend called ``name``; its module is imported only when chosen."""
    if name == "hf":
        from ragline.generators.hf_backend import HFGenerator

        return HFGenerator(model, **options)
    if name == "vllm":
        from ragline.generators.vllm_backend import VLLMGenerator

        return VLLMGenerator(model, **options)
    if name == "http":
        from ragline.generators.http_backend import HTTPGenerator

        return HTTPGenerator(model, **options)
    raise ConfigError(f"unknown generation backend {name!r}; use one of {', '.join(BACKENDS)}")
