"""ragline: a retrieval and RAG pipeline engine.

The common names are importable from here; they load on first use, so
``import ragline`` itself stays cheap and has no side effects.
"""

__version__ = "0.1.0"

_LAZY_EXPORTS = {
    "Pipeline": "ragline.engine.pipeline",
    "Query": "ragline.engine.types",
    "Hit": "ragline.engine.types",
    "Passage": "ragline.engine.types",
    "BM25": "ragline.retrievers.bm25",
    "Dense": "ragline.retrievers.dense",
    "Fuse": "ragline.retrievers.fusion",
    "CrossEncoderRerank": "ragline.rerankers.cross_encoder",
    "Generate": "ragline.generators.generate",
    "build_index": "ragline.engine.index.build",
    "update_index": "ragline.engine.index.update",
    "Index": "ragline.engine.index.index",
}

__all__ = sorted(_LAZY_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module_name = _LAZY_EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'ragline' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)
