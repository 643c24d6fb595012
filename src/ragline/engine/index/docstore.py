"""The document store: passage id → text, title and provenance, in SQLite.

Rows are numbered in insertion order starting at 0 (``row``); the dense index
stores vectors in that same order, so a FAISS result row is a store row. A
document's passages are consecutive rows.

It also keeps a content hash per document (``documents`` table), so that an
update can tell changed documents from unchanged ones without re-reading or
re-encoding them. Indexes built before the table existed have none: every
document they hold counts as changed on its first update.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import sqlite3
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragline.engine.errors import InputError
from ragline.engine.index.filters import BOOL, LIST, NUMBER, OTHER, STRING, FilterError, Node, compile_filter
from ragline.engine.types import Hit, Passage, Query

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS passages (
    row     INTEGER PRIMARY KEY,
    id      TEXT NOT NULL UNIQUE,
    doc_id  TEXT NOT NULL,
    title   TEXT NOT NULL,
    text    TEXT NOT NULL,
    start   INTEGER NOT NULL,
    end     INTEGER NOT NULL,
    metadata TEXT  -- the document's metadata as a JSON object, or NULL
)
"""

_DOCUMENTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_id  TEXT PRIMARY KEY,
    hash    TEXT NOT NULL
)
"""

# SQLite limits the number of host parameters in one statement.
_LOOKUP_CHUNK = 900


class DocStore:
    def __init__(self, path: str | Path, create: bool = False):
        self.path = Path(path)
        if not create and not self.path.exists():
            raise FileNotFoundError(self.path)
        # One connection shared by threads; the lock serialises access to it.
        self._conn = sqlite3.connect(self.path, check_same_thread=False)
        self._lock = threading.Lock()
        # The connection closes with the store (or at exit), never lingers.
        self._closer = weakref.finalize(self, self._conn.close)
        if create:
            self._conn.execute("PRAGMA journal_mode=OFF")
            self._conn.execute("PRAGMA synchronous=OFF")
            self._conn.execute(_SCHEMA)
            self._conn.execute(_DOCUMENTS_SCHEMA)
        self._next_row = self.count()

    def add(self, passages: Sequence[Passage], origins: Sequence[str] | None = None) -> None:
        rows = [
            (self._next_row + i, p.id, p.doc_id, p.title, p.text, p.start, p.end, _metadata_json(p.metadata))
            for i, p in enumerate(passages)
        ]
        with self._lock:
            try:
                self._conn.executemany(
                    "INSERT INTO passages (row, id, doc_id, title, text, start, end, metadata) VALUES (?,?,?,?,?,?,?,?)", rows)
            except sqlite3.IntegrityError:
                self._raise_duplicate(passages, origins)
            self._next_row += len(rows)

    def _raise_duplicate(self, passages: Sequence[Passage], origins: Sequence[str] | None) -> None:
        seen: set[str] = set()
        for i, p in enumerate(passages):
            # Rows of this batch may be in the table already (executemany stops
            # at the failing row), so only rows of earlier batches count.
            known = p.id in seen or self._conn.execute(
                "SELECT 1 FROM passages WHERE id = ? AND row < ?", (p.id, self._next_row)
            ).fetchone()
            if known:
                origin = origins[i] if origins else ""
                path, _, line = origin.rpartition(":")
                raise InputError(
                    f"duplicate document id {p.id!r}",
                    path=path or None,
                    line=int(line) if line.isdigit() else None,
                )
            seen.add(p.id)
        raise InputError("duplicate document id in a batch")

    def add_documents(self, documents: Sequence[tuple[str, str, str]]) -> None:
        """Record ``(doc_id, content hash, origin)`` for each document."""
        with self._lock:
            self._refuse_known_documents(documents)
            self._conn.executemany("INSERT INTO documents VALUES (?,?)", [(d, h) for d, h, _ in documents])

    def _refuse_known_documents(self, documents: Sequence[tuple[str, str, str]]) -> None:
        # Checked before inserting: executemany would stop half-way through the batch.
        ids = [doc_id for doc_id, _, _ in documents]
        known: set[str] = set()
        for i in range(0, len(ids), _LOOKUP_CHUNK):
            chunk = ids[i : i + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            known.update(r[0] for r in self._conn.execute(f"SELECT doc_id FROM documents WHERE doc_id IN ({marks})", chunk))
        seen: set[str] = set()
        for doc_id, _, origin in documents:
            if doc_id in known or doc_id in seen:
                path, _, line = origin.rpartition(":")
                raise InputError(f"duplicate document id {doc_id!r}", path=path or None,
                                 line=int(line) if line.isdigit() else None)
            seen.add(doc_id)

    def document_hashes(self) -> dict[str, str]:
        """Document id → content hash; empty for an index built before hashes were kept."""
        with self._lock:
            try:
                return dict(self._conn.execute("SELECT doc_id, hash FROM documents"))
            except sqlite3.OperationalError:  # no such table
                return {}

    def document_spans(self) -> dict[str, tuple[int, int]]:
        """Document id → (first row, number of passages), in row order."""
        with self._lock:
            return {doc_id: (first, count) for doc_id, first, count in self._conn.execute(
                "SELECT doc_id, MIN(row), COUNT(*) FROM passages GROUP BY doc_id ORDER BY MIN(row)")}

    def passages_in_rows(self, first: int, count: int) -> list[Passage]:
        """The passages of rows ``first`` to ``first + count - 1``, in row order."""
        columns = self._columns  # (takes the lock itself)
        with self._lock:
            return [_passage(*row) for row in self._conn.execute(
                f"SELECT {columns} FROM passages WHERE row >= ? AND row < ? ORDER BY row", (first, first + count))]

    def commit(self) -> None:
        with self._lock:
            self._conn.commit()

    def durable_commits(self) -> None:
        """From here on every ``commit`` is whole after the process is killed at
        any moment (SQLite's write-ahead log), so a build can resume from its
        last one; a new store otherwise writes with no journal at all, for speed."""
        with self._lock:
            self._conn.commit()
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")

    def single_file(self) -> None:
        """Fold the write-ahead log back in and stop using one: the store is
        then one self-contained file (a reader needs no write access beside it)."""
        with self._lock:
            self._conn.commit()
            self._conn.execute("PRAGMA journal_mode=DELETE")

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM passages").fetchone()[0]

    def ids_in_row_order(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT id FROM passages ORDER BY row")]

    def get(self, ids: Iterable[str]) -> dict[str, Passage]:
        ids = list(dict.fromkeys(ids))
        found: dict[str, Passage] = {}
        columns = self._columns  # (takes the lock itself)
        with self._lock:
            for i in range(0, len(ids), _LOOKUP_CHUNK):
                chunk = ids[i : i + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                for row in self._conn.execute(f"SELECT {columns} FROM passages WHERE id IN ({marks})", chunk):
                    found[row[0]] = _passage(*row)
        return found

    @functools.cached_property
    def _columns(self) -> str:
        """The passage columns to read: indexes built before metadata was kept have none."""
        with self._lock:
            names = {r[1] for r in self._conn.execute("PRAGMA table_info(passages)")}
        return "id, doc_id, title, text, start, end, " + ("metadata" if "metadata" in names else "NULL")

    @functools.cached_property
    def metadata_fields(self) -> dict[str, set[str]]:
        """Metadata field → the kinds of value its passages hold (see ``filters.value_kind``)."""
        if not self._columns.endswith("metadata"):
            return {}
        fields: dict[str, set[str]] = {}
        with self._lock:
            rows = self._conn.execute(
                "SELECT key, type, CASE WHEN type = 'array' THEN MAX(EXISTS (SELECT 1 FROM json_each(value) AS e "
                "WHERE e.type IN ('array', 'object'))) END FROM passages, json_each(passages.metadata) "
                "WHERE passages.metadata IS NOT NULL GROUP BY key, type")
            for key, json_type, nested in rows:
                kind = _JSON_KINDS.get(json_type)
                if json_type == "array" and nested:
                    kind = OTHER
                if kind is not None:
                    fields.setdefault(key, set()).add(kind)
        return fields

    def select(self, tree: Node, fields: dict[str, set[str]] | None = None) -> Selection:
        """The passages whose metadata passes the filter ``tree``, compiled
        against ``fields`` (default: this store's own; a shard of a sharded
        index is given the whole index's)."""
        condition, parameters = compile_filter(tree, self.metadata_fields if fields is None else fields)
        with self._lock:
            try:
                matched = self._conn.execute(f"SELECT row, id FROM passages WHERE {condition} ORDER BY row",
                                             parameters).fetchall()
            except sqlite3.OperationalError as error:  # the filter language's limits keep this away; in case not
                if "too many" in str(error) or "too large" in str(error) or "stack overflow" in str(error):
                    raise FilterError(f"the filter is too large for the document store ({error})") from None
                raise
        return Selection(tuple(row for row, _ in matched), frozenset(pid for _, pid in matched))

    def doc_ids(self, ids: Iterable[str]) -> dict[str, str]:
        """Passage id → document id, for folding passage hits to documents."""
        return {pid: p.doc_id for pid, p in self.get(ids).items()}

    @functools.cached_property
    def has_chunks(self) -> bool:
        """Whether any passage is a chunk (its id differs from its document's)."""
        with self._lock:
            return self._conn.execute("SELECT 1 FROM passages WHERE id != doc_id LIMIT 1").fetchone() is not None

    def close(self) -> None:
        with self._lock:
            self._closer()


@dataclass(frozen=True)
class Selection:
    """Passages that pass a filter: their store rows (FAISS ids) and ids."""

    rows: tuple[int, ...]
    ids: frozenset[str]


_JSON_KINDS = {"integer": NUMBER, "real": NUMBER, "text": STRING, "true": BOOL, "false": BOOL,
               "array": LIST, "object": OTHER}


def _metadata_json(metadata: dict[str, Any] | None) -> str | None:
    return json.dumps(metadata, ensure_ascii=False, sort_keys=True) if metadata else None


def _passage(pid, doc_id, title, text, start, end, metadata) -> Passage:
    return Passage(pid, doc_id, text, title, start, end, json.loads(metadata) if metadata else None)


def content_hash(doc_id: str, title: str, text: str, metadata: dict[str, Any] | None = None) -> str:
    """What decides a document's passages, hashed: with the index's chunking
    settings fixed, equal hashes mean equal passages (and embeddings). Empty
    metadata leaves the hash as it was before metadata was kept."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (doc_id, title, text) + ((_metadata_json(metadata),) if metadata else ()):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()


def fetch_passages(hits: Sequence[Hit]) -> list[Passage]:
    """Texts of ``hits`` in order, one look-up per store. Hits without a store,
    or whose id a store no longer holds, are left out (and logged)."""
    return [p for p in _lookup(hits) if p is not None]


def ranked_passages(query: Query, n: int) -> list[Passage]:
    """Texts of the top ``n`` of the query's ranking, reusing ``query.passages``
    when an earlier stage already fetched exactly those, in that order.

    Stages pair ``query.ranking[i]`` with the i-th passage, so a hit whose
    passage cannot be found is removed from the ranking (and logged) rather
    than leaving the two lists out of step."""
    hits = query.ranking[:n]
    held = query.passages[: len(hits)]
    if [p.id for p in held] == [h.id for h in hits]:
        return held
    found = _lookup(hits)
    if None in found:
        kept = [hit for hit, passage in zip(hits, found) if passage is not None]
        query.ranking = kept + query.ranking[len(hits):]
    return [p for p in found if p is not None]


def _lookup(hits: Sequence[Hit]) -> list[Passage | None]:
    by_store: dict[int, tuple[DocStore, list[str]]] = {}
    for hit in hits:
        if hit.store is not None:
            by_store.setdefault(id(hit.store), (hit.store, []))[1].append(hit.id)
    found: dict[tuple[int, str], Passage] = {}
    for key, (store, ids) in by_store.items():
        for pid, passage in store.get(ids).items():
            found[(key, pid)] = passage
    passages = [found.get((id(h.store), h.id)) if h.store is not None else None for h in hits]
    missing = [h.id for h, p in zip(hits, passages) if p is None]
    if missing:
        log.warning("%d hit(s) have no passage text in their document store and were dropped: %s",
                    len(missing), ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    return passages


class MemoryStore:
    """A document store held in a dict, with the read side of ``DocStore``: for
    candidate pools that exist only for one evaluation (a question's own
    paragraphs), where writing SQLite would be pointless."""

    def __init__(self, passages: Iterable[Passage]):
        self._by_id = {p.id: p for p in passages}
        self.has_chunks = any(p.id != p.doc_id for p in self._by_id.values())

    def get(self, ids: Iterable[str]) -> dict[str, Passage]:
        return {pid: self._by_id[pid] for pid in ids if pid in self._by_id}

    def doc_ids(self, ids: Iterable[str]) -> dict[str, str]:
        return {pid: p.doc_id for pid, p in self.get(ids).items()}


def query_over(query_id: str, text: str, passages: Sequence[Passage]) -> Query:
    """A query whose candidates are given, in this order (source ``pool``,
    no scores): for evaluations and stages that work on a fixed set."""
    store = MemoryStore(passages)
    hits = [Hit(p.id, 0.0, rank, "pool", store) for rank, p in enumerate(passages, 1)]
    return Query(query_id, text, hits={"pool": hits}, ranking=hits)
