"""The generator's prompt cut into blocks for passage KV reuse.

The chat prompt (system prompt, numbered passages, question) is rendered as
text exactly as the HF generator renders it (``prompt_spans.prompt_text``)
and cut at the passages:

    prefix | "[1]" | " Title\\ntext" | "\\n\\n[2]" | " Title\\ntext" | ... | final

Each piece is tokenised on its own. A passage's block does not hold its
number, so the same passage is the same block (the same cache entry) in any
slot of any prompt; the numbers are tiny blocks of their own. The prefix
(chat template start, system prompt, "Passages:") is shared by every prompt;
the final block holds the question, the instruction and the start of the
assistant's turn and is the only part prefilled per query.

``full`` runs the same pieces' tokens as one sequence, so full and block
modes differ only in attention, never in tokenisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ragline.engine.errors import RaglineError
from ragline.engine.lm.prompt_spans import prompt_text
from ragline.engine.lm.prompts import PromptBuilder
from ragline.engine.types import Passage


@dataclass
class BlockPrompt:
    prefix: list[int]
    blocks: list[list[int]]  # number and passage blocks, in prompt order
    final: list[int]

    @property
    def all_ids(self) -> list[int]:
        return self.prefix + [t for block in self.blocks for t in block] + self.final

    @property
    def cached_tokens(self) -> int:
        return len(self.prefix) + sum(len(b) for b in self.blocks)


def block_prompt(tokenizer, builder: PromptBuilder, question: str, passages: Sequence[Passage]) -> BlockPrompt:
    if builder.max_passage_chars:
        raise RaglineError("passage KV reuse needs whole passages: set max_passage_chars to 0")
    text = prompt_text(tokenizer, builder.messages(question, passages))
    pieces: list[str] = []
    cursor = 0
    prefix_end = None
    for number, passage in enumerate(passages, 1):
        label = f"[{number}]"
        body = builder.context([passage])[len("[1]"):]  # " Title\ntext" as the prompt writes it
        start = text.find(label + body, cursor)
        if start < 0:
            raise RaglineError(f"passage {passage.id} is not in the rendered prompt (does the template rewrite it?)")
        if prefix_end is None:
            prefix_end = start
        # The separator before a passage goes with its number, so that a
        # passage's block is the same text in every slot, last one included.
        pieces.append(text[cursor:start] + label if number > 1 else label)
        pieces.append(body)
        cursor = start + len(label) + len(body)
    if prefix_end is None:  # no passages: everything is prefix and final
        prefix_end = cursor = 0
    prefix, final = text[:prefix_end], text[cursor:]

    def ids(piece: str) -> list[int]:
        return tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []

    return BlockPrompt(ids(prefix), [ids(p) for p in pieces], ids(final))
