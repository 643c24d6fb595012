"""Generation with a transformers causal LM: the CPU default.

Prompts go through the model's chat template; batches are left-padded and
sorted by length so padding stays small; decoding is greedy or sampled
(seeded). Time to first token is read from a streamer that ``generate``
calls synchronously: its first call carries the prompt, its second the first
new tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ragline.engine.errors import RaglineError
from ragline.engine.lm.cache_argument import with_cache
from ragline.engine.lm.causal_lm import load_causal_lm
from ragline.engine.lm.packaged import canonical_model_id
from ragline.engine.lm.prompt_spans import prompt_ids
from ragline.engine.settings import PositiveInt
from ragline.generators.backend import Conversation, Generation, GeneratorBackend, Sampling, cut_at_stop


class HFGenerator(GeneratorBackend):
    backend = "hf"

    def __init__(self, model: str, device: str | None = None, dtype: str = "auto", batch_size: PositiveInt = 8):
        self.model = canonical_model_id(model)
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.lm = None
        self._stop_checks: dict[tuple[str, ...], object] = {}  # stop list -> generate()'s stopping criteria
        self.tokenizer = None

    def warm_up(self) -> None:
        if self.lm is None:
            self.lm, self.tokenizer = load_causal_lm(self.model, self.device, self.dtype)

    def prompt_ids(self, conversation: Conversation) -> list[int]:
        """Token ids of the prompt, ending where the assistant's answer begins."""
        self.warm_up()
        return prompt_ids(self.tokenizer, conversation)

    def generate(self, conversations: Sequence[Conversation], sampling: Sampling) -> list[Generation]:
        self.warm_up()
        prompts = [self.prompt_ids(c) for c in conversations]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for index, generation in zip(chunk, self._generate_batch([prompts[i] for i in chunk], sampling)):
                results[index] = generation
        return results  # type: ignore[return-value]

    def generate_one(self, conversation: Conversation, sampling: Sampling,
                     on_text: Callable[[str], None] | None = None) -> Generation:
        self.warm_up()
        return self._generate_batch([self.prompt_ids(conversation)], sampling, on_text)[0]

    def generate_ids(self, prompt: list[int], sampling: Sampling, on_text: Callable[[str], None] | None = None,
                     past_key_values=None) -> Generation:
        """One prompt given as token ids; ``past_key_values`` may already hold
        its first tokens (the model then runs only the rest)."""
        self.warm_up()
        return self._generate_batch([prompt], sampling, on_text, past_key_values)[0]

    def answer_nll(self, conversation: Conversation, answer: str) -> float:
        self.warm_up()
        return self.continuation_nll(self.prompt_ids(conversation), self.answer_ids(answer))

    def answer_ids(self, answer: str) -> list[int]:
        """The tokens of an answer as the model would write it after the prompt."""
        self.warm_up()
        return list(self.tokenizer(answer.strip(), add_special_tokens=False)["input_ids"])

    def continuation_nll(self, prompt: list[int], continuation: list[int]) -> float:
        """Mean negative log-likelihood per token of ``continuation`` after
        ``prompt``, teacher-forced in one forward."""
        import torch

        if not continuation:
            raise RaglineError("the answer to score has no tokens")
        self.warm_up()
        window = getattr(self.lm.config, "max_position_embeddings", None)
        if window and len(prompt) + len(continuation) > window:
            raise RaglineError(f"the prompt ({len(prompt)} tokens) and the answer to score ({len(continuation)}) "
                               f"exceed what {self.model} reads ({window})")
        ids = torch.tensor([list(prompt) + list(continuation)], device=self.lm.device)
        with torch.inference_mode():
            logits = self.lm(input_ids=ids).logits[0]
        predicting = logits[len(prompt) - 1: len(prompt) - 1 + len(continuation)].float()
        return float(torch.nn.functional.cross_entropy(predicting, ids[0, len(prompt):]))

    def _generate_batch(self, prompts: list[list[int]], sampling: Sampling,
                        on_text: Callable[[str], None] | None = None, past_key_values=None) -> list[Generation]:
        import torch

        self.check_window(prompts, sampling)
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.lm.device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.lm.device)
        streamer = _Streamer(self.tokenizer if on_text else None, on_text)
        options = dict(max_new_tokens=sampling.max_new_tokens, do_sample=not sampling.greedy,
                       pad_token_id=pad, streamer=streamer)
        if not sampling.greedy:
            options.update(temperature=sampling.temperature, top_p=sampling.top_p)
        else:  # silence the model's own sampling defaults, which greedy ignores
            options.update(temperature=None, top_p=None, top_k=None)
        if sampling.stop:
            options["stopping_criteria"] = self._stop_criteria(tuple(sampling.stop))
        if past_key_values is not None:
            options.update(with_cache(self.lm, past_key_values))
        started = time.perf_counter()
        # generate() samples from torch's global generator: seed it inside a
        # fork of the global state, so the caller's random stream is untouched.
        devices = [self.lm.device] if self.lm.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(sampling.seed)
            output = self.lm.generate(input_ids=input_ids, attention_mask=attention_mask, **options)
        seconds = time.perf_counter() - started
        ttft = None if streamer.first_token_at is None else streamer.first_token_at - started
        generations = []
        for row in output[:, width:].tolist():
            new = _until_eos(row, self.tokenizer, self.lm.generation_config)
            text = cut_at_stop(self.tokenizer.decode(new, skip_special_tokens=True), sampling.stop).strip()
            generations.append(Generation(text, None, len(new), ttft, seconds))
        for generation, prompt in zip(generations, prompts):
            generation.prompt_tokens = len(prompt)
        return generations

    def _stop_criteria(self, stops: tuple[str, ...]):
        """``generate``'s stop-string check, built once per stop list: building
        it reads the whole vocabulary (~60 ms for SmolLM2's 49K tokens), a fifth
        of a warm passage-KV answer if done per call. It keeps no state between calls."""
        from transformers import StoppingCriteriaList, StopStringCriteria

        if stops not in self._stop_checks:
            self._stop_checks[stops] = StoppingCriteriaList([StopStringCriteria(self.tokenizer, list(stops))])
        return self._stop_checks[stops]

    def check_window(self, prompts: list[list[int]], sampling: Sampling) -> None:
        window = getattr(self.lm.config, "max_position_embeddings", None)
        longest = max(len(p) for p in prompts)
        if window and longest + sampling.max_new_tokens > window:
            raise RaglineError(
                f"the prompt has {longest} tokens and {sampling.max_new_tokens} more are asked for, "
                f"but {self.model} reads at most {window}; retrieve fewer passages or compress the context"
            )


def _until_eos(tokens: list[int], tokenizer, generation_config) -> list[int]:
    """Generated tokens up to the first end-of-sequence (padding follows it)."""
    eos = generation_config.eos_token_id if generation_config.eos_token_id is not None else tokenizer.eos_token_id
    stops = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    for position, token in enumerate(tokens):
        if token in stops:
            return tokens[:position]
    return tokens


class _Streamer:
    """Receives ``generate``'s token stream: notes when the first new token
    arrives and, for a single conversation, decodes text incrementally."""

    def __init__(self, tokenizer, on_text: Callable[[str], None] | None):
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.first_token_at: float | None = None
        self._seen_prompt = False
        self._tokens: list[int] = []
        self._emitted = ""

    def put(self, value) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if self.on_text is None:
            return
        self._tokens.extend(value.reshape(-1).tolist())
        # Emit only complete characters: a byte-level token may end mid-character.
        self._emit(complete_only=True)

    def end(self) -> None:
        # The answer may end mid-character (cut by max_new_tokens): what is
        # left goes out as the answer's text has it.
        if self.on_text is not None:
            self._emit(complete_only=False)

    def _emit(self, complete_only: bool) -> None:
        text = self.tokenizer.decode(self._tokens, skip_special_tokens=True).lstrip()
        if (complete_only and text.endswith("\ufffd")) or not text.startswith(self._emitted):
            return
        if len(text) > len(self._emitted):
            self.on_text(text[len(self._emitted):])
            self._emitted = text
