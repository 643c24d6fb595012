"""The RAG prompt: a system prompt, numbered passages with titles, the question.

Answers cite passages by number in square brackets (``[2]``); ``cited_passages``
maps those numbers back to passage ids and ``strip_citations`` removes them
where only the answer itself is wanted (exact-match scoring).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ragline.engine.lm.packaged import canonical_model_id
from ragline.engine.types import Passage

DEFAULT_SYSTEM_PROMPT = (
    "You answer questions using the numbered passages you are given. "
    "Give a short, direct answer, then the numbers of the passages you used in square brackets, like [1]. "
    "If the passages do not contain the answer, say so."
)
PLAIN_SYSTEM_PROMPT = (
    "You answer questions using the numbered passages you are given. "
    "Reply with the answer only: a few words, no full sentence, no explanation."
)

CITE_REMINDER = "Answer briefly and cite the passages you used, like [1]."
PLAIN_REMINDER = "Answer with a few words only."

_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


@dataclass(frozen=True)
class PromptBuilder:
    """Turns (question, passages or a compressed context) into chat messages.

    ``cite`` selects the citing system prompt; ``system_prompt`` overrides
    either. ``max_passage_chars`` guards the model's window against one
    overlong passage (0 = no limit).
    """

    system_prompt: str | None = None
    cite: bool = True
    max_passage_chars: int = 0

    def shared_settings(self, model: str | None, passages: int) -> dict[str, Any]:
        """What every stage that reads or writes this prompt must agree on
        (``Stage.generator_prompt``): the model (canonical id; it fixes the
        chat template; None where a server's model name says nothing about
        local weights), the system prompt, the citation mode and how many
        passages it shows."""
        settings: dict[str, Any] = {"system_prompt": self.system_prompt, "cite": self.cite, "passages": passages}
        if model is not None:
            settings["model"] = canonical_model_id(model)
        return settings

    @property
    def system(self) -> str:
        if self.system_prompt is not None:
            return self.system_prompt
        return DEFAULT_SYSTEM_PROMPT if self.cite else PLAIN_SYSTEM_PROMPT

    def context(self, passages: Sequence[Passage]) -> str:
        blocks = []
        for number, passage in enumerate(passages, 1):
            text = " ".join(passage.text.split())
            if self.max_passage_chars and len(text) > self.max_passage_chars:
                # One character more tells whether the cut falls between words.
                text = text[: self.max_passage_chars + 1].rsplit(" ", 1)[0] + " ..."
            blocks.append(passage_block(number, passage, text))
        return "\n\n".join(blocks)

    def messages(self, question: str, passages: Sequence[Passage] = (), context: str | None = None) -> list[dict]:
        """``context`` (e.g. a compressor's output) replaces the numbered passages."""
        body = context if context is not None else self.context(passages)
        user = f"Passages:\n{body}\n\nQuestion: {question.strip()}" if body.strip() else f"Question: {question.strip()}"
        # A last reminder after the passages: small models forget the system prompt.
        user += "\n" + (CITE_REMINDER if self.cite else PLAIN_REMINDER)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def passage_block(number: int, passage: Passage, text: str) -> str:
    """One passage as the prompt shows it: ``[n] Title`` then its text. Every
    context (whole passages or a compressor's kept sentences) is made of these,
    so citations mean the same thing either way."""
    header = f"[{number}] {passage.title}" if passage.title else f"[{number}]"
    return f"{header}\n{text}"


def kept_context(passages: Sequence[Passage], kept: Mapping[str, Sequence[tuple[int, int]]]) -> str:
    """A compressed context (``Query.kept``) as text: each passage's kept
    character ranges, whitespace collapsed, under its number and title in the
    order of ``passages``; passages with nothing kept are left out, and the
    others keep their numbers so that citations still resolve."""
    blocks = []
    for number, passage in enumerate(passages, 1):
        ranges = kept.get(passage.id)
        if ranges:
            text = " ".join(" ".join(passage.text[start:end].split()) for start, end in ranges)
            blocks.append(passage_block(number, passage, text))
    return "\n\n".join(blocks)


def cited_passages(answer: str, passages: Sequence[Passage]) -> list[str]:
    """Ids of the passages an answer cites, in first-cited order; numbers
    outside 1..len(passages) are ignored."""
    cited: list[str] = []
    for group in _CITATION.findall(answer):
        for number in group.split(","):
            index = int(number) - 1
            if 0 <= index < len(passages) and passages[index].id not in cited:
                cited.append(passages[index].id)
    return cited


def strip_citations(answer: str) -> str:
    return " ".join(_CITATION.sub(" ", answer).split())
