"""One question against an index: the pipeline ``ragline ask`` builds or
loads, and running it with the answer streamed as it is generated."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ragline.engine.lm.causal_lm import DEFAULT_GENERATOR
from ragline.engine.pipeline import Pipeline
from ragline.engine.registry import STAGES, lookup
from ragline.engine.retrieval_pipeline import retrieval_pipeline
from ragline.engine.types import Query
from ragline.generators.generate import Generate


def ask_pipeline(index: str, config: str | Path | None = None, *, retriever: str = "auto", reranker: str | None = None,
                 depth: int = 50, passages: int = 5, backend: str = "hf", model: str | None = None,
                 max_new_tokens: int = 128, options: dict | None = None) -> Pipeline:
    """From ``config`` (stages without an ``index`` read ``index``; a default
    ``generate`` stage is appended if the file has none), or else: retrieve
    ``depth`` candidates, optionally rerank them to ``passages``, generate
    (``options`` go to the generation backend, e.g. an http ``url``)."""
    if config is not None:
        pipeline = Pipeline.load(config, defaults={"index": index})
        if any(stage.is_generator for stage in pipeline.stages):
            return pipeline
        # A new pipeline, not an appended stage: its checks (stage order, one
        # generator prompt for AttnRank and generation) must see the generator.
        return Pipeline([*pipeline.stages, Generate()], top_k=pipeline.top_k, batch_size=pipeline.batch_size)
    stages = list(retrieval_pipeline(index, retriever, k=depth).stages)
    if reranker:
        stages.append(lookup(STAGES, "cross_encoder")(model=reranker, top_k=passages, depth=depth))
    stages.append(Generate(backend=backend, model=model or DEFAULT_GENERATOR, passages=passages,
                           max_new_tokens=max_new_tokens, options=options))
    return Pipeline(stages, top_k=passages)


def answer_question(pipeline: Pipeline, question: str, on_text: Callable[[str], None] | None = None,
                    query_filter: str | None = None) -> Query:
    """Run ``question`` (with a metadata filter for its retrieval, if any)
    through ``pipeline``; with ``on_text``, the answer streams through it
    piece by piece."""
    streamed = None if on_text is None else (lambda _query, piece: on_text(piece))
    return pipeline.run([Query("q0", question, filter=query_filter)], on_text=streamed)[0]
