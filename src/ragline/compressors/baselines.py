"""Baselines for context compression, on the same interface and budgets as the
attention-based compressors: random sentences, leading sentences
(truncation), and the sentences most similar to the question under a
sentence embedding (all-MiniLM-L6-v2 by default)."""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence

from ragline.compressors.base import SentenceCompressor
from ragline.compressors.sentences import SentenceUnit
from ragline.engine.lm.encoders import DEFAULT_ENCODER
from ragline.engine.types import Passage


class RandomSentences(SentenceCompressor):
    name = "random_sentences"

    def __init__(self, seed: int = 0, **budget):
        super().__init__(**budget)
        self.seed = seed

    def score_units(self, question: str, passages: Sequence[Passage], units: Sequence[SentenceUnit]) -> list[float]:
        # Seeded by the question too, so every question gets its own draw and reruns repeat it.
        rng = random.Random(self.seed * 1_000_003 + zlib.crc32(question.encode()))
        return [rng.random() for _ in units]

class LeadingSentences(SentenceCompressor):
    """Truncation: the first sentences of the context, in order, up to the budget."""

    name = "leading_sentences"

    def score_units(self, question: str, passages: Sequence[Passage], units: Sequence[SentenceUnit]) -> list[float]:
        return [-float(i) for i in range(len(units))]


class EmbeddingSentences(SentenceCompressor):
    name = "embedding_sentences"

    def __init__(self, model: str = DEFAULT_ENCODER, device: str | None = None, **budget):
        super().__init__(**budget)
        self.model_name = model
        self.device = device
        self._encoder = None

    def warm_up(self) -> None:
        from ragline.engine.lm.encoders import load_sentence_encoder

        super().warm_up()
        self._encoder = load_sentence_encoder(self.model_name, self.device)

    def score_units(self, question: str, passages: Sequence[Passage], units: Sequence[SentenceUnit]) -> list[float]:
        self.warm_up()
        return question_similarity(self._encoder, question, [u.text for u in units]).tolist()


def question_similarity(encoder, question: str, texts: Sequence[str]):
    """Cosine similarity of each text to the question under a sentence encoder: (len(texts),)."""
    vectors = encoder.encode([question, *texts], normalize_embeddings=True, convert_to_numpy=True,
                             show_progress_bar=False)
    return vectors[1:] @ vectors[0]
