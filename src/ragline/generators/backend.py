"""What every generation backend offers.

A backend turns chat conversations into text. ``generate`` takes a batch (the
backend decides how to batch or parallelise it); ``generate_one`` takes one
conversation and calls ``on_text`` with each new piece of text as it is
produced (streaming). Both report token counts and the time to first token.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ragline.engine.types import Sampling

Conversation = list[dict]  # [{"role": "system"|"user"|"assistant", "content": str}, ...]


@dataclass
class Generation:
    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft: float | None = None  # seconds from the call to the first generated token
    seconds: float = 0.0  # wall time of the call that produced it
    cached_tokens: int | None = None  # prompt tokens a server's prefix cache held (vLLM)


class GeneratorBackend(abc.ABC):
    #: Name and model, for traces and error messages.
    backend: str = ""
    model: str = ""

    def warm_up(self) -> None:
        """Load the model or check the server; called before the first request."""

    @abc.abstractmethod
    def generate(self, conversations: Sequence[Conversation], sampling: Sampling) -> list[Generation]:
        """One generation per conversation, in order."""

    def answer_nll(self, conversation: Conversation, answer: str) -> float | None:
        """Mean negative log-likelihood per token of ``answer``, teacher-forced
        after the prompt ``conversation`` makes; None where the backend cannot
        score text (a server that returns no prompt log-probabilities)."""
        return None

    def generate_one(self, conversation: Conversation, sampling: Sampling,
                     on_text: Callable[[str], None] | None = None) -> Generation:
        """One conversation; backends that can stream call ``on_text`` per piece."""
        result = self.generate([conversation], sampling)[0]
        if on_text is not None:
            on_text(result.text)
        return result


@runtime_checkable  # PassageKVReuse's annotations are checked as settings: the type must be checkable
class TokenLevelBackend(Protocol):
    """What passage KV reuse (``kv_reuse/``) needs from a backend beyond
    ``GeneratorBackend``: the model and tokenizer in this process, prompts as
    token ids, generation that continues from an assembled cache, and the
    likelihood of a continuation. The ``hf`` backend is one; a server is not."""

    model: str
    lm: Any  # the loaded transformers model (after warm_up)
    tokenizer: Any

    def warm_up(self) -> None: ...

    def check_window(self, prompts: list[list[int]], sampling: Sampling) -> None:
        """Refuse, with advice, prompts that do not fit the model's window with the answer."""

    def generate_ids(self, prompt: list[int], sampling: Sampling, on_text: Callable[[str], None] | None = None,
                     past_key_values: Any = None) -> Generation:
        """One prompt as token ids; ``past_key_values`` may already hold its first tokens."""

    def answer_ids(self, answer: str) -> list[int]:
        """An answer's tokens as the model would write it after the prompt."""

    def continuation_nll(self, prompt: list[int], continuation: list[int]) -> float:
        """Mean negative log-likelihood per token of ``continuation`` after ``prompt``."""


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the first stop string (stop strings are not returned)."""
    cut = len(text)
    for marker in stop:
        if marker:
            found = text.find(marker)
            if found != -1:
                cut = min(cut, found)
    return text[:cut]
