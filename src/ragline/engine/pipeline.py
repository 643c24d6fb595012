"""An ordered list of stages that queries flow through, batch by batch."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ragline.engine.config import load_pipeline, save_pipeline_config
from ragline.engine.errors import ConfigError
from ragline.engine.index.docstore import fetch_passages
from ragline.engine.settings import NonNegativeInt, PositiveInt, check_settings
from ragline.engine.stage import Stage
from ragline.engine.types import Query, StageTrace


class Pipeline:
    """Runs queries through ``stages`` in batches of ``batch_size``.

    After the last stage, the top ``top_k`` of each query's ranking get their
    passage text (unless a stage already filled ``Query.passages``); a hit
    whose text cannot be found has no passage (and is logged), so readers
    pair passages with hits by id.
    """

    def __init__(self, stages: Sequence[Stage], top_k: NonNegativeInt = 10, batch_size: PositiveInt = 256):
        if not stages:
            raise ConfigError("a pipeline needs at least one stage")
        check_settings("pipeline", Pipeline.__init__, {"top_k": top_k, "batch_size": batch_size})
        self.stages = list(stages)
        self.top_k = top_k
        self.batch_size = batch_size
        _check_order(self.stages)
        _check_generator_prompts(self.stages)

    def warm_up(self) -> None:
        for stage in self.stages:
            stage.warm_up()

    def run(self, queries: str | Iterable[str | Query],
            on_text: Callable[[Query, str], None] | None = None) -> list[Query]:
        """Every query through every stage, a batch at a time. Per-query
        settings ride on the ``Query`` (``filter``, ``sampling``). With
        ``on_text``, a generating stage calls ``on_text(query, piece)`` with
        each piece of its answer as it is written (streaming)."""
        if isinstance(queries, str):
            queries = [queries]
        items = [q if isinstance(q, Query) else Query(id=str(i), text=q) for i, q in enumerate(queries)]
        self.warm_up()
        done: list[Query] = []
        for start in range(0, len(items), self.batch_size):
            done.extend(self._run_batch(items[start : start + self.batch_size], on_text))
        return done

    def retrieval_part(self) -> Pipeline | None:
        """The stages before the first generating one, as a pipeline that
        attaches no passages (what a search runs); None if there are none."""
        first = next((i for i, stage in enumerate(self.stages) if stage.is_generator), len(self.stages))
        return Pipeline(self.stages[:first], top_k=0, batch_size=self.batch_size) if first else None

    def _run_batch(self, batch: list[Query], on_text: Callable[[Query, str], None] | None = None) -> list[Query]:
        for stage in self.stages:
            before = [len(q.ranking) for q in batch]
            t0 = time.perf_counter()
            batch = stage.run(batch) if on_text is None else stage.run_streaming(batch, on_text)
            seconds = time.perf_counter() - t0
            for q, n_in in zip(batch, before):
                q.trace.append(StageTrace(stage.name, seconds, len(batch), n_in, len(q.ranking), q.take_notes()))
        for q in batch:
            # An answered query keeps the passages its answer came from, even none.
            if not q.passages and self.top_k and q.answer is None:
                q.passages = fetch_passages(q.ranking[: self.top_k])
        return batch

    def to_config(self, with_defaults: bool = False) -> dict[str, Any]:
        return {
            "top_k": self.top_k,
            "batch_size": self.batch_size,
            "stages": [{stage.name: stage.to_config(with_defaults)} for stage in self.stages],
        }

    def save(self, path: str | Path) -> None:
        save_pipeline_config(self.to_config(), path)

    @classmethod
    def load(cls, path: str | Path, defaults: dict[str, Any] | None = None) -> Pipeline:
        """The pipeline a YAML file describes; ``defaults`` fill parameters a
        stage accepts but the file leaves out."""
        return load_pipeline(path, cls, defaults)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(s) for s in self.stages)
        return f"Pipeline([\n  {inner}\n], top_k={self.top_k})"


def _check_order(stages: list[Stage]) -> None:
    """Several retrievers must meet a fusion stage before anything reads the ranking."""
    pending = 0
    for stage in stages:
        if stage.is_retriever:
            pending += 1
        elif stage.is_fusion:
            pending = 0
        elif pending > 1:
            raise ConfigError(
                f"stage {stage.name!r} follows {pending} retrievers with no fusion stage "
                "between them; add a 'fuse' stage"
            )
    if pending > 1:
        raise ConfigError(f"the pipeline ends with {pending} retrievers and no 'fuse' stage")


def _check_generator_prompts(stages: list[Stage]) -> None:
    """Stages that reorder by the generator's attention measure it on the
    generator's own prompt; a different model, system prompt or citation mode
    would make them reorder for a prompt that is never generated from, and a
    different number of passages would have the generator show the first
    slots of a layout made for more (dropping what was put in the last)."""
    first: Stage | None = None
    for stage in stages:
        settings = stage.generator_prompt()
        if settings is None:
            continue
        if first is None:
            first = stage
            continue
        reference = first.generator_prompt()
        for key in sorted(settings.keys() & reference.keys()):
            if settings[key] != reference[key]:
                raise ConfigError(
                    f"stage {stage.name!r} uses {key}={settings[key]!r} but stage {first.name!r} uses "
                    f"{key}={reference[key]!r}: stages that share the generator's prompt must agree on its "
                    "model, system prompt, citation mode and number of passages"
                )
