"""Generation with vLLM's offline ``LLM`` engine (optional ``gpu`` extra).

vLLM is imported only when this backend warms up, so the rest of ragline
runs where it cannot be installed. Automatic prefix caching is on: prompts
that share a prefix (system prompt, then passages in the same order) reuse
its KV blocks across requests.

``answer_nll`` scores a given answer through vLLM's prompt log-probabilities:
prompt and answer go in as one token sequence, one token is generated (and
ignored), and the log-probability of every sequence token under the tokens
before it comes back with the prompt. The prompt is tokenised as the hf
backend does it (chat template, then tokens), so the two backends score the
same token sequence. vLLM may leave its prefix cache aside for requests that
ask for prompt log-probabilities: every position's logits are needed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ragline.engine.errors import RaglineError
from ragline.engine.lm.packaged import canonical_model_id, resolve_model_source
from ragline.engine.lm.prompt_spans import prompt_ids
from ragline.engine.optional import import_optional
from ragline.engine.settings import Fraction, PositiveInt
from ragline.generators.backend import Conversation, Generation, GeneratorBackend, Sampling


class VLLMGenerator(GeneratorBackend):
    backend = "vllm"

    def __init__(self, model: str, dtype: str = "auto", gpu_memory_utilization: Fraction = 0.85,
                 max_model_len: PositiveInt | None = None, tensor_parallel_size: PositiveInt = 1,
                 prefix_caching: bool = True):
        self.model = canonical_model_id(model)
        self.dtype = dtype
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        self.tensor_parallel_size = tensor_parallel_size
        self.prefix_caching = prefix_caching
        self.llm = None

    def warm_up(self) -> None:
        if self.llm is not None:
            return
        vllm = import_optional("vllm", needed_for="the vllm backend")
        options = dict(model=resolve_model_source(self.model), dtype=self.dtype,
                       gpu_memory_utilization=self.gpu_memory_utilization,
                       tensor_parallel_size=self.tensor_parallel_size,
                       enable_prefix_caching=self.prefix_caching)
        if self.max_model_len:
            options["max_model_len"] = self.max_model_len
        self.llm = vllm.LLM(**options)

    def generate(self, conversations: Sequence[Conversation], sampling: Sampling) -> list[Generation]:
        self.warm_up()
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                                top_p=sampling.top_p, seed=sampling.seed, stop=list(sampling.stop) or None)
        started = time.perf_counter()
        outputs = self.llm.chat(list(conversations), params, use_tqdm=False)
        seconds = time.perf_counter() - started
        return [Generation(o.outputs[0].text.strip(), len(o.prompt_token_ids or ()), len(o.outputs[0].token_ids),
                           _first_token_seconds(o), seconds) for o in outputs]

    def answer_nll(self, conversation: Conversation, answer: str) -> float:
        """Scored on ragline's rendering of the chat prompt (the hf backend's,
        ``prompt_ids``); vLLM's own ``chat`` renders the template itself, so
        for a template whose two renderings differ the score is of a prompt
        that differs from the one answered from, by that rendering."""
        self.warm_up()
        from vllm import SamplingParams

        tokenizer = self.llm.get_tokenizer()
        prompt = prompt_ids(tokenizer, conversation)
        answer_ids = list(tokenizer(answer.strip(), add_special_tokens=False)["input_ids"])
        if not answer_ids:
            raise RaglineError("the answer to score has no tokens")
        # prompt_logprobs=0: only each sequence token's own log-probability.
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        output = self.llm.generate([{"prompt_token_ids": prompt + answer_ids}], params, use_tqdm=False)[0]
        return mean_answer_nll(output.prompt_logprobs, len(prompt), answer_ids)


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


def _first_token_seconds(output) -> float | None:
    """vLLM's own time to first token for a request, when its metrics carry it."""
    metrics = getattr(output, "metrics", None)
    first = getattr(metrics, "first_token_time", None)
    arrival = getattr(metrics, "arrival_time", None)
    if first is None or arrival is None:
        return None
    return first - arrival
