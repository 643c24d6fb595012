"""The data that flows through a pipeline.

A ``Query`` carries one question from the first stage to the last: the hits of
each retriever, the current ranking, the passages with their text, the
compressed context, the answer, and a trace of every stage it went through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Document:
    """One record of a corpus as a reader yields it."""

    id: str
    text: str
    title: str = ""
    origin: str = ""  # "file:line" of the record, for error messages
    # Fields to filter on (year, language, source, ...): a JSON object's values.
    metadata: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Passage:
    """The unit that is indexed and retrieved: a whole document or a chunk of one.

    ``start``/``end`` are character offsets of the passage in its document's text.
    """

    id: str
    doc_id: str
    text: str
    title: str = ""
    start: int = 0
    end: int = 0
    # The document's metadata (every chunk of a document carries it whole).
    metadata: dict[str, Any] | None = field(default=None, compare=False)

    def indexed_text(self) -> str:
        """What the retrievers see: the title, when there is one, then the text."""
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass
class Hit:
    """One retrieved passage id with its score and 1-based rank in its list."""

    id: str
    score: float
    rank: int
    source: str
    # The document store that can resolve ``id`` to text. Not part of equality.
    store: Any = field(default=None, repr=False, compare=False)


@dataclass
class StageTrace:
    """What one stage did to one query: wall time of the stage's batch call
    (shared by the queries of that batch), the batch size, and item counts."""

    stage: str
    seconds: float
    batch_size: int
    items_in: int
    items_out: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Answer:
    text: str
    cited: list[str] = field(default_factory=list)  # passage ids the answer cites


@dataclass(frozen=True)
class Sampling:
    """Decoding settings. ``temperature`` 0 means greedy. Checked where they
    come in: the generate stage's annotations, a served request's schema."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Query:
    id: str
    text: str
    hits: dict[str, list[Hit]] = field(default_factory=dict)  # per retriever source
    ranking: list[Hit] = field(default_factory=list)  # the current best ordering
    passages: list[Passage] = field(default_factory=list)  # text of the top of ``ranking``
    context: str | None = None
    # What a compressor kept of each passage: character ranges of the passage's
    # text, by passage id (a passage kept not at all is absent). The context
    # text says the same for a generator that reads text; a generator that
    # reuses cached passage KV slices the cache by these.
    kept: dict[str, list[tuple[int, int]]] | None = None
    answer: Answer | None = None
    trace: list[StageTrace] = field(default_factory=list)
    # A metadata filter for this query alone (``lang=en``); the retrievers'
    # own filters hold as well.
    filter: str | None = None
    # Decoding settings for this query alone (a served request's max_tokens,
    # temperature, stop); the generate stage's own where None.
    sampling: Sampling | None = None
    # What the running stage reports about this query (TTFT, tokens, cache
    # hits); the pipeline moves it into that stage's trace entry.
    _notes: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def note(self, **values: Any) -> None:
        self._notes.update(values)

    def take_notes(self) -> dict[str, Any]:
        notes, self._notes = self._notes, {}
        return notes

    def missing_shards(self) -> list[int]:
        """The shards of a sharded index that did not answer for this query
        (its results are then partial), as the retrievers noted in the trace."""
        return sorted({n for entry in self.trace for n in entry.extra.get("missing_shards", ())})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view of the query's results; ``partial`` and
        ``missing_shards`` only when shards of a sharded index did not answer."""
        missing = self.missing_shards()
        return {
            **({"partial": True, "missing_shards": missing} if missing else {}),
            "id": self.id,
            "text": self.text,
            "ranking": [
                {"id": h.id, "score": h.score, "rank": h.rank, "source": h.source}
                for h in self.ranking
            ],
            "passages": [
                {"id": p.id, "doc_id": p.doc_id, "title": p.title, "text": p.text,
                 **({"metadata": p.metadata} if p.metadata else {})}
                for p in self.passages
            ],
            "context": self.context,
            "answer": None if self.answer is None else {"text": self.answer.text, "cited": self.answer.cited},
            "trace": [
                {"stage": t.stage, "seconds": t.seconds, "batch_size": t.batch_size,
                 "items_in": t.items_in, "items_out": t.items_out, **t.extra}
                for t in self.trace
            ],
        }
