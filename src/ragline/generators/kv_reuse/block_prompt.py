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

A compressed context (``Query.kept``: the character ranges a compressor kept
of each passage) is the same cut with fewer tokens: each kept passage's block
is still the whole passage's tokens (the cache entry, shared with any other
compression of it), with ``keep`` listing the token positions that stay —
the title line and every token that overlaps a kept range. The prompt the
model sees is exactly those tokens, so the context text is their decoding.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
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
    # Per block: the token positions the prompt keeps (None: all of them).
    keep: list[list[int] | None] | None = None

    def kept(self, index: int) -> list[int]:
        block = self.blocks[index]
        positions = None if self.keep is None else self.keep[index]
        return block if positions is None else [block[i] for i in positions]

    @property
    def all_ids(self) -> list[int]:
        return self.prefix + [t for i in range(len(self.blocks)) for t in self.kept(i)] + self.final

    @property
    def cached_tokens(self) -> int:
        return len(self.prefix) + sum(len(self.kept(i)) for i in range(len(self.blocks)))


def block_prompt(tokenizer, builder: PromptBuilder, question: str, passages: Sequence[Passage],
                 kept: Mapping[str, Sequence[tuple[int, int]]] | None = None) -> BlockPrompt:
    """The prompt cut into blocks; with ``kept`` (``Query.kept``), only the
    kept sentences of each passage, and passages with nothing kept left out
    (the others keep their numbers, so citations still point at them)."""
    if builder.max_passage_chars:
        raise RaglineError("passage KV reuse needs whole passages: set max_passage_chars to 0")
    if kept is not None:
        return _pruned_block_prompt(tokenizer, builder, question, passages, kept)
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

    return BlockPrompt(_prefix_ids(tokenizer, prefix), [ids(p) for p in pieces], ids(final))


def _pruned_block_prompt(tokenizer, builder: PromptBuilder, question: str, passages: Sequence[Passage],
                         kept: Mapping[str, Sequence[tuple[int, int]]]) -> BlockPrompt:
    numbered = [(n, p) for n, p in enumerate(passages, 1) if kept.get(p.id)]
    bodies: list[tuple[list[int], list[int]]] = []  # (the whole passage's ids, the kept positions)
    blocks_text = []
    for number, passage in numbered:
        ids, positions = _kept_positions(tokenizer, builder, passage, kept[passage.id])
        bodies.append((ids, positions))
        blocks_text.append(f"[{number}]" + tokenizer.decode([ids[i] for i in positions]))
    context = "\n\n".join(blocks_text)
    text = prompt_text(tokenizer, builder.messages(question, context=context))

    def ids(piece: str) -> list[int]:
        return tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []

    if not numbered:  # nothing kept: no passage to reuse, the whole prompt is prefilled
        return BlockPrompt([], [], _prefix_ids(tokenizer, text), [])
    start = text.find(context)
    if start < 0:
        raise RaglineError("the compressed context is not in the rendered prompt (does the template rewrite it?)")
    prefix_text, final_text = text[:start], text[start + len(context):]
    blocks: list[list[int]] = []
    keep: list[list[int] | None] = []
    for slot, ((number, _), (passage_ids, positions)) in enumerate(zip(numbered, bodies)):
        label = f"[{number}]" if slot == 0 else f"\n\n[{number}]"
        blocks += [ids(label), passage_ids]
        keep += [None, positions]
    return BlockPrompt(_prefix_ids(tokenizer, prefix_text), blocks, ids(final_text), keep)


def _prefix_ids(tokenizer, text: str) -> list[int]:
    """The prompt's first piece with the special tokens (BOS) that a plain call
    adds when no chat template holds them, as ``prompt_spans.prompt_ids`` does."""
    return list(tokenizer(text, add_special_tokens=not tokenizer.chat_template)["input_ids"])


def _kept_positions(tokenizer, builder: PromptBuilder, passage: Passage,
                    ranges: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """The passage block's token ids (as ``block_prompt`` cuts them) and the
    positions to keep: the title line, and every token overlapping a kept range."""
    body = builder.context([passage])[len("[1]"):]
    encoded = tokenizer(body, add_special_tokens=False, return_offsets_mapping=True)
    to_body = _normalised_offsets(passage.text, len(body))
    spans = [(to_body(start, "start"), to_body(end, "end")) for start, end in ranges]
    header = len(body) - len(" ".join(passage.text.split()))
    positions = [i for i, (a, b) in enumerate(encoded["offset_mapping"])
                 if a < header or any(a < end and b > start for start, end in spans if end > start)]
    return list(encoded["input_ids"]), positions


def _normalised_offsets(text: str, body_length: int):
    """Map a character offset of ``text`` to the prompt body, where the text
    stands with its whitespace collapsed (``PromptBuilder.context``) after the
    title line: ranges of words keep their place, whitespace between them
    becomes one space."""
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    normalised_starts, position = [], 0
    for start, end in words:
        normalised_starts.append(position)
        position += end - start + 1
    header = body_length - max(position - 1, 0)

    def to_body(offset: int, side: str) -> int:
        for (start, end), at in zip(words, normalised_starts):
            if offset < end or (side == "end" and offset == end):
                # Inside or before this word: a start snaps forward to it, an
                # end before it snaps back to the previous word's end.
                if offset >= start:
                    return header + at + (offset - start)
                return header + (at if side == "start" else max(at - 1, 0))
        return header + max(position - 1, 0)

    return to_body
