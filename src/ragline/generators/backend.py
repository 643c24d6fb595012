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

from ragline.engine.types import Sampling

Conversation = list[dict]  # [{"role": "system"|"user"|"assistant", "content": str}, ...]


@dataclass
class Generation:
    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft: float | None = None  # seconds from the call to the first generated token
    seconds: float = 0.0  # wall time of the call that produced it


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


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the first stop string (stop strings are not returned)."""
    cut = len(text)
    for marker in stop:
        if marker:
            found = text.find(marker)
            if found != -1:
                cut = min(cut, found)
    return text[:cut]
