"""Per-sentence attention features from a proxy language model (Sentinel's input).

The proxy reads the passages, the question and an answer cue as plain text:

    Title one
    Sentence. Sentence.

    Title two
    ...

    Question: ...
    Answer:

The probe reads the attention a reading position pays to every sentence,
per layer and head, as a share of what the whole context receives, averaged
over the sentence's tokens and multiplied by the number of context tokens —
so a sentence attended like an average token scores 1 in every head whatever
the context length, and features from short and long contexts (or chunks)
are on one scale. Which positions read (``POOLINGS``):

- ``last``: the token about to answer (the paper's feature);
- ``question``: the mean over the question's own tokens — each reads the
  context with one more word of the question in view;
- ``last+question``: both, side by side.

All three come from one forward. A sentence's feature vector has
layers × heads entries per reading.

A context longer than ``max_context_tokens`` is cut into chunks of whole
passages (a passage longer than a chunk into runs of whole sentences), each
read with the same question.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ragline.compressors.sentences import SentenceUnit, pack_in_order
from ragline.engine.lm.attention_probe import AttentionProbe
from ragline.engine.types import Passage

PROMPT_LAYOUT = "ragline-proxy/1: titles, sentences, blank line, 'Question: ...', 'Answer:'; last token probed"
POOLINGS = ("last", "question", "last+question")


class AttentionFeatures:
    def __init__(self, model, tokenizer, max_context_tokens: int = 4096, backend: str = "auto"):
        self.model = model
        self.tokenizer = tokenizer
        self.probe = AttentionProbe(model, backend=backend)
        # Never past the proxy's window: leave room for titles, question and cue.
        window = getattr(model.config, "max_position_embeddings", None) or max_context_tokens
        self.max_context_tokens = max(32, min(max_context_tokens, window - 96))
        self.layers = model.config.num_hidden_layers
        self.heads = model.config.num_attention_heads

    def __call__(self, question: str, passages: Sequence[Passage], units: Sequence[SentenceUnit],
                 pooling: str = "last", heads: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
        """(len(units), layers × heads × readings) float32, column
        ``reading × layers × heads + layer × heads + head``; with
        ``last+question`` the last token's features come first. ``heads``:
        read only these (layer, head) pairs — the probe kernel computes no
        other head, and the other columns stay 0."""
        if pooling not in POOLINGS:
            raise ValueError(f"unknown attention pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
        width = self.layers * self.heads
        features = np.zeros((len(units), width * (2 if pooling == "last+question" else 1)), dtype=np.float32)
        for chunk in self._chunks(units) if units else []:
            last, over_question = self._read(question, passages, [units[i] for i in chunk], heads)
            features[chunk] = {"last": last, "question": over_question,
                               "last+question": np.concatenate([last, over_question], axis=1)}[pooling]
        return features

    def _chunks(self, units: Sequence[SentenceUnit]) -> list[list[int]]:
        lengths = [len(ids) for ids in self.tokenizer([u.text for u in units], add_special_tokens=False).input_ids]
        # Titles, separators and the question ride on top: a margin of ~10%.
        return pack_in_order(lengths, 0.9 * self.max_context_tokens)

    def _read(self, question: str, passages: Sequence[Passage], units: Sequence[SentenceUnit],
              heads: Sequence[tuple[int, int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The last token's and the question tokens' mean features, each
        (len(units), layers × heads)."""
        text, char_ranges, (q_start, q_end) = _layout(question, passages, units)
        encoded = self.tokenizer(text, return_offsets_mapping=True)  # special tokens map to (0, 0): no span
        offsets = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        span_ids = np.full(len(offsets), -1, dtype=np.int64)
        for span, (start, end) in enumerate(char_ranges):
            # A token belongs to the sentence its characters overlap (a
            # leading-space token starts just before the sentence).
            inside = (offsets[:, 1] > start) & (offsets[:, 0] < end) & (span_ids < 0)
            span_ids[inside] = span
        last = len(offsets) - 1
        in_question = np.flatnonzero((offsets[:, 1] > q_start) & (offsets[:, 0] < q_end))
        positions = [int(p) for p in in_question if p != last] + [last]
        input_ids = torch.tensor([encoded["input_ids"]])
        result = self.probe.run(input_ids, torch.from_numpy(span_ids), num_spans=len(char_ranges),
                                query_positions=positions, heads=heads)
        shares = result.renormalized().per_token()[:, 0]  # (layers, heads, positions, spans)
        if heads is not None:  # one row per pair: put each where its head sits
            placed = shares.new_zeros((self.layers, self.heads, *shares.shape[2:]))
            for row, (layer, head) in enumerate(heads):
                placed[layer, head] = shares[row, 0]
            shares = placed
        context_tokens = float((span_ids >= 0).sum())
        readings = shares[:, :, -1], shares[:, :, :-1].mean(dim=2) if len(positions) > 1 else shares[:, :, -1]
        return tuple((r * context_tokens).permute(2, 0, 1).reshape(len(char_ranges), -1).cpu().numpy()
                     for r in readings)


def _layout(question: str, passages: Sequence[Passage],
            units: Sequence[SentenceUnit]) -> tuple[str, list[tuple[int, int]], tuple[int, int]]:
    """The proxy prompt, each unit's character range in it, and the question's."""
    parts: list[str] = []
    ranges: list[tuple[int, int]] = []
    length = 0
    current = None

    def add(piece: str) -> None:
        nonlocal length
        parts.append(piece)
        length += len(piece)

    for unit in units:
        if unit.passage != current:
            if current is not None:
                add("\n\n")
            title = passages[unit.passage].title
            if title:
                add(title + "\n")
            current = unit.passage
        elif parts:
            add(" ")
        sentence = " ".join(unit.text.split())
        ranges.append((length, length + len(sentence)))
        add(sentence)
    add("\n\nQuestion: ")
    asked = " ".join(question.split())
    question_range = (length, length + len(asked))
    add(f"{asked}\nAnswer:")
    return "".join(parts), ranges, question_range
