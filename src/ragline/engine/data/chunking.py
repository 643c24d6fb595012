"""Turn documents into indexable passages, optionally in overlapping windows.

Windows count whitespace-separated words (a tokenizer-independent stand-in for
tokens, so an index does not depend on one model's vocabulary) and keep each
passage's character offsets in its document. A document that fits one window
stays one passage with the document's own id; chunk ``n`` of a longer one gets
the id ``<doc_id>#<n>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from ragline.engine.errors import ConfigError
from ragline.engine.types import Document, Passage

_WORD = re.compile(r"\S+")


def passages_of(documents: Iterable[Document], window: int | None = None, overlap: int = 0) -> Iterator[tuple[Passage, str]]:
    """Yield ``(passage, origin)`` pairs; ``origin`` is the document's file:line."""
    if window is not None and (window < 1 or not 0 <= overlap < window):
        raise ConfigError("chunking needs window >= 1 and 0 <= overlap < window")
    for doc in documents:
        for passage in chunk_document(doc, window, overlap):
            yield passage, doc.origin


def chunk_document(doc: Document, window: int | None, overlap: int = 0) -> list[Passage]:
    if window is None:
        return [Passage(doc.id, doc.id, doc.text, doc.title, 0, len(doc.text), doc.metadata)]
    words = [(m.start(), m.end()) for m in _WORD.finditer(doc.text)]
    if len(words) <= window:
        return [Passage(doc.id, doc.id, doc.text, doc.title, 0, len(doc.text), doc.metadata)]
    step = window - overlap
    passages = []
    for n, first in enumerate(range(0, len(words) - overlap, step)):
        span = words[first : first + window]
        start, end = span[0][0], span[-1][1]
        passages.append(Passage(f"{doc.id}#{n}", doc.id, doc.text[start:end], doc.title, start, end, doc.metadata))
        if first + window >= len(words):
            break
    return passages
