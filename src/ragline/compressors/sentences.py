"""Sentences with their character offsets, and the sentence units of a set of
passages that compressors score and select.

The splitter is a rule, not a model: a sentence ends at ., ! or ? (closing
quotes and brackets included) followed by white space and an upper-case
letter, digit or opening quote — unless the word before the mark is a known
abbreviation or a single initial ("J. R. R. Tolkien", "U.S.") — or at a blank
line. Good enough for encyclopedic text; a compressor only needs units that
do not cut a supporting fact in two.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ragline.engine.lm.prompts import kept_context
from ragline.engine.types import Passage

_BOUNDARY = re.compile(r"""[.!?]["')\]]*\s+(?=["'(\[]?[A-Z0-9])|\n\s*\n""")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt ft no vs etc inc ltd co corp dept univ gen col lt sgt capt rev est approx "
    "jan feb mar apr jun jul aug sep sept oct nov dec fig vol ed eds al".split()
)


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Half-open character ranges of the sentences of ``text``, white space trimmed."""
    ranges = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        if match.group().startswith((".",)) and _ends_with_abbreviation(text[start:match.start()]):
            continue
        ranges.append((start, match.start() + 1 if text[match.start()] in ".!?" else match.start()))
        start = match.end()
    ranges.append((start, len(text)))
    return [trimmed for s, e in ranges if (trimmed := _trim(text, s, e))]


def _ends_with_abbreviation(before: str) -> bool:
    word = re.search(r"([A-Za-z.]+)$", before)
    if word is None:
        return False
    token = word.group(1).rstrip(".").lower()
    # "J." and "U.S." are initials: a single letter, or letters joined by dots.
    return token in _ABBREVIATIONS or len(token) == 1 or "." in token


def _trim(text: str, start: int, end: int) -> tuple[int, int] | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def pack_in_order(lengths: Sequence[int], limit: float) -> list[list[int]]:
    """Indices of consecutive items grouped so that each group's lengths sum
    to at most ``limit`` (an item longer than the limit gets a group alone)."""
    chunks: list[list[int]] = []
    used = 0
    for index, length in enumerate(lengths):
        if not chunks or (chunks[-1] and used + length > limit):
            chunks.append([])
            used = 0
        chunks[-1].append(index)
        used += length
    return chunks


@dataclass(frozen=True)
class SentenceUnit:
    passage: int  # index into the passages given to the compressor
    start: int  # character range in that passage's text
    end: int
    text: str


def sentence_units(passages: Sequence[Passage]) -> list[SentenceUnit]:
    return [SentenceUnit(i, s, e, p.text[s:e]) for i, p in enumerate(passages) for s, e in split_sentences(p.text)]


def render_context(passages: Sequence[Passage], units: Sequence[SentenceUnit], keep: Sequence[int]) -> str:
    """The kept sentences, grouped under their passage's original number and
    title, in their original order; passages with nothing kept are left out
    (numbers stay those of the full list, so citations still resolve)."""
    return kept_context(passages, kept_ranges(passages, units, keep))


def kept_ranges(passages: Sequence[Passage], units: Sequence[SentenceUnit],
                keep: Sequence[int]) -> dict[str, list[tuple[int, int]]]:
    """The kept units as character ranges of their passage's text, by passage
    id, in text order (``Query.kept``)."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    for index in sorted(keep, key=lambda i: (units[i].passage, units[i].start)):
        unit = units[index]
        ranges.setdefault(passages[unit.passage].id, []).append((unit.start, unit.end))
    return ranges
