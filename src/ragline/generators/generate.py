"""The ``generate`` stage: prompt the language model with the question and its
top passages (or a compressor's context) and attach the answer.

Backends: ``hf`` (transformers, the CPU default), ``vllm`` (vLLM's engine,
GPU or CPU), ``http`` (any OpenAI-compatible server). Each query's trace entry records the backend,
prompt and completion tokens and the time to first token.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ragline.engine.errors import ConfigError, RaglineError
from ragline.engine.index.docstore import ranked_passages
from ragline.engine.lm.causal_lm import DEFAULT_GENERATOR
from ragline.engine.lm.prompts import PromptBuilder, cited_passages, kept_context
from ragline.engine.registry import STAGES, lookup
from ragline.engine.settings import Fraction, NonNegativeFloat, NonNegativeInt, PositiveInt, check_options
from ragline.engine.stage import Stage
from ragline.engine.types import Answer, Query
from ragline.generators.backend import Generation, GeneratorBackend, Sampling
from ragline.generators.backend_registry import BackendName, check_backend_options, make_backend
from ragline.generators.kv_reuse.modes import KVReuseMode, check_mode_options


class Generate(Stage):
    name = "generate"
    is_generator = True

    def __init__(
        self,
        backend: BackendName = "hf",
        model: str = DEFAULT_GENERATOR,
        passages: NonNegativeInt = 5,
        max_new_tokens: PositiveInt = 64,
        temperature: NonNegativeFloat = 0.0,
        top_p: Fraction = 1.0,
        seed: int = 0,
        stop: list[str] | None = None,
        cite: bool = True,
        system_prompt: str | None = None,
        max_passage_chars: NonNegativeInt = 0,
        options: dict[str, Any] | None = None,
        kv_reuse: KVReuseMode = "none",
        kv_options: dict[str, Any] | None = None,
        stable_prefix: bool | None = None,
    ):
        """``options`` go to the backend, checked against its constructor:
        ``device``, ``dtype``, ``batch_size`` (hf); ``dtype``,
        ``gpu_memory_utilization``, ``max_model_len``, ``tensor_parallel_size``,
        ``prefix_caching``, ``enforce_eager``, ``reserved_cores`` (vllm);
        ``url``, ``timeout``, ``retries``, ``backoff``, ``concurrency``,
        ``api_key_env`` (http).

        ``kv_reuse`` (hf backend; see ``generators/kv_reuse/passage_reuse.py``);
        ``kv_options``, checked against ``PassageKVReuse``'s constructor:
        ``memory_bytes``, ``directory`` (the on-disk tier), ``shift``,
        ``layout_bytes``; ``sink_tokens`` (sink only); ``blend_fraction``,
        ``blend_check_layer`` (blend only). Options the chosen mode does not
        read are refused.

        ``stable_prefix``: show the passages in a canonical order (by id)
        instead of rank order, so that prompts over the same passages share
        a prefix and a server's prefix cache (vLLM) hits; true undoes any
        reordering stage. Default: on for the vllm backend unless a stage
        that orders passages (AttnRank, attention sorting) ran, off otherwise."""
        if kv_reuse != "none" and backend != "hf":
            raise ConfigError(f"generate: kv_reuse: {kv_reuse!r} runs on the hf backend; the {backend} backend "
                              "keeps its own prefix cache (vLLM: prefix caching on)")
        check_backend_options(backend, options)
        if kv_reuse != "none":  # its keys and values, against the constructor they are handed to
            from ragline.generators.kv_reuse.passage_reuse import PassageKVReuse

            check_options("generate", "kv_options", PassageKVReuse.__init__, kv_options, of="kv reuse",
                          fixed=("generator", "mode"))
        check_mode_options(kv_reuse, kv_options)  # the rules that span the mode and its options
        self.backend_name = backend
        self.model = model
        self.passages = passages
        self.sampling = Sampling(max_new_tokens, temperature, top_p, seed, tuple(stop or ()))
        self.prompts = PromptBuilder(system_prompt, cite, max_passage_chars)
        self.options = dict(options or {})
        self.kv_reuse = kv_reuse
        self.kv_options = dict(kv_options or {})
        self.stable_prefix = stable_prefix
        self.backend: GeneratorBackend | None = None
        self.reuse = None

    def warm_up(self) -> None:
        self.backend = make_backend(self.backend_name, self.model, **self.options)
        self.backend.warm_up()
        if self.kv_reuse != "none":
            from ragline.generators.kv_reuse.passage_reuse import PassageKVReuse

            self.reuse = PassageKVReuse(self.backend, self.kv_reuse, **self.kv_options)
            self.reuse.warm_up()

    def conversation(self, query: Query) -> list[dict]:
        """The chat messages for ``query``; fills ``query.passages`` with what the prompt shows.

        After a compressor (``Query.kept``), the passages are the ones it
        chose, in the order later stages (AttnRank, attention sorting) left
        them, and the context is rendered from the kept ranges in that order."""
        if query.kept is None:
            query.passages = ranked_passages(query, self.passages) if self.passages else []
        if self._canonical_order(query):
            query.passages = sorted(query.passages, key=lambda p: p.id)
        if query.kept is not None:
            query.context = kept_context(query.passages, query.kept)
        return self.prompts.messages(query.text, query.passages, query.context)

    def _canonical_order(self, query: Query) -> bool:
        if self.stable_prefix is not None:
            return self.stable_prefix
        return self.backend_name == "vllm" and not any(_orders_passages(t.stage) for t in query.trace)

    def generator_prompt(self) -> dict[str, Any]:
        # A server's model name says nothing about local weights.
        return self.prompts.shared_settings(None if self.backend_name == "http" else self.model, self.passages)

    def run(self, batch: list[Query]) -> list[Query]:
        return self._generate(batch, None)

    def run_streaming(self, batch: list[Query], on_text: Callable[[Query, str], None]) -> list[Query]:
        return self._generate(batch, on_text)

    def sampling_for(self, query: Query) -> Sampling:
        """The query's own decoding settings (a served request's), else the stage's."""
        return query.sampling or self.sampling

    def _generate(self, batch: list[Query], on_text: Callable[[Query, str], None] | None) -> list[Query]:
        """The one generation path. Queries that decode alike go to the backend
        as one batch; a streamed query, or one that assembles its own cache from
        cached passages, goes alone."""
        self.warm_up()
        conversations = [self.conversation(q) for q in batch]
        if on_text is None and self.reuse is None:
            groups: dict[Sampling, list[int]] = {}
            for i, query in enumerate(batch):
                groups.setdefault(self.sampling_for(query), []).append(i)
            for sampling, members in groups.items():
                generations = self.backend.generate([conversations[i] for i in members], sampling)
                for i, generation in zip(members, generations):
                    self._attach(batch[i], generation)
            return batch
        for query, conversation in zip(batch, conversations):
            pieces = None if on_text is None else functools.partial(on_text, query)
            if self._from_cached_passages(query):
                self._generate_reusing(query, pieces)
            else:
                self._attach(query, self.backend.generate_one(conversation, self.sampling_for(query), pieces))
                if self.reuse is not None:
                    query.note(kv_reuse="skipped: a context without kept ranges")
        return batch

    def _from_cached_passages(self, query: Query) -> bool:
        """Whether ``query`` is answered (and scored) from cached passage
        blocks: KV reuse is on, and a compressor's context, if any, came with
        the ranges it kept (a context that is only text has nothing per
        passage to reuse)."""
        return self.reuse is not None and (query.context is None or query.kept is not None)

    def _generate_reusing(self, query: Query, on_text: Callable[[str], None] | None) -> None:
        kept = query.kept if query.context is not None else None
        generation, stats = self.reuse.generate(self.prompts, query.text, query.passages, self.sampling_for(query),
                                                on_text, kept)
        if "context" in stats:  # the pruned cache's tokens, exactly
            query.context = stats.pop("context")
        self._attach(query, generation)
        query.note(**stats)

    def answer_nll(self, query: Query, answer: str) -> float | None:
        """Mean negative log-likelihood per token of ``answer`` (e.g. the gold
        one), teacher-forced after the very prompt — and, with ``kv_reuse``,
        the very cache — this stage answered ``query`` from (after ``run``).
        None where the backend cannot score text."""
        self.warm_up()
        if self._from_cached_passages(query):
            kept = query.kept if query.context is not None else None
            return self.reuse.answer_nll(self.prompts, query.text, query.passages,
                                         self.backend.answer_ids(answer), kept)
        return self.backend.answer_nll(self.prompts.messages(query.text, query.passages, query.context), answer)

    def _attach(self, query: Query, generation: Generation) -> None:
        query.answer = Answer(generation.text, cited_passages(generation.text, query.passages))
        query.note(backend=self.backend_name, model=self.backend.model, ttft=generation.ttft,
                   prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens)
        if generation.cached_tokens is not None:
            query.note(prefix_cached_tokens=generation.cached_tokens)


def _orders_passages(stage_name: str) -> bool:
    """Whether the stage a trace entry names chose the passages' order."""
    try:
        return bool(getattr(lookup(STAGES, stage_name), "orders_passages", False))
    except RaglineError:  # not a registered stage (a pipeline-level entry)
        return False
