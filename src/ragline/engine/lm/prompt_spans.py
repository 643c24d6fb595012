"""Where each passage sits, in tokens, in the prompt the generator will see.

The reordering stages probe the generator's own prompt (chat template,
system prompt, numbered passages, question) and need each passage block's
token range in it. The prompt is rendered as text exactly as the HF
generator renders it, each block is found in that text in order, and the
fast tokenizer's character offsets map the blocks onto tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ragline.engine.errors import RaglineError
from ragline.engine.lm.prompts import PromptBuilder
from ragline.engine.types import Passage


def prompt_text(tokenizer, conversation: list[dict]) -> str:
    """The generator's prompt as text, ending where the answer begins: the chat
    template's, or for a base model without one, the turns as plain text."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return "\n\n".join(turn["content"] for turn in conversation) + "\n\nAnswer:"


def prompt_ids(tokenizer, conversation: list[dict]) -> list[int]:
    """The token ids the generator is fed for ``conversation``."""
    # The template already holds any special tokens; do not add them twice.
    return list(tokenizer(prompt_text(tokenizer, conversation), add_special_tokens=not tokenizer.chat_template)["input_ids"])


def passage_spans(tokenizer, builder: PromptBuilder, question: str,
                  passages: Sequence[Passage]) -> tuple[list[int], list[tuple[int, int]]]:
    """(prompt token ids, half-open token range of each passage block)."""
    text = prompt_text(tokenizer, builder.messages(question, passages))
    # The template already holds any special tokens; do not add them twice.
    encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=not tokenizer.chat_template)
    offsets = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    ranges = []
    cursor = 0
    for passage in passages:
        block = builder.context([passage])  # "[1] Title\ntext": numbered 1 here, so search past the number
        body = block.split("]", 1)[1]
        found = text.find(body, cursor)
        if found < 0:
            raise RaglineError(f"passage {passage.id} is not in the rendered prompt (does the template rewrite it?)")
        start, end = text.rfind("[", 0, found), found + len(body)
        cursor = end
        tokens = np.flatnonzero((offsets[:, 1] > start) & (offsets[:, 0] < end))
        ranges.append((int(tokens[0]), int(tokens[-1]) + 1) if len(tokens) else (0, 0))
    # Token ranges may touch where a token straddles two blocks: make them disjoint.
    for i in range(1, len(ranges)):
        if ranges[i][0] < ranges[i - 1][1]:
            ranges[i] = (ranges[i - 1][1], max(ranges[i - 1][1], ranges[i][1]))
    return list(encoded["input_ids"]), ranges
