"""Updating an index: add, replace and delete documents, all or nothing.

An update is copy-on-write: it writes a complete new index folder beside the
old one and swaps it in whole (``atomic_directory``), so a crash at any moment
leaves the old index or the new one, readers that have the old one open keep
reading it, and the result is by construction what a rebuild writes:

- the document store is rewritten in the rebuild's row order, unchanged
  passages copied from the old store;
- components rebuild from the new store's passages: BM25 re-indexes them all
  (its collection statistics must be the new corpus's; Lucene indexing is the
  cheap part), dense copies the stored embeddings of unchanged passages and
  encodes only new and changed ones (see ``Builder.reuse`` in build.py).

A document is unchanged when its content hash (kept in the document store) is
equal; its passages are then equal too, because an update chunks with the
settings the index was built with. Chunked documents change as a whole.

Row order, which decides ties: with ``delete_missing`` the corpus is the whole
new collection and its order is kept (exactly a rebuild on it); otherwise the
corpus is a set of changes: replaced documents keep their place, new ones
follow in corpus order (a rebuild on the old corpus, edited in place, with the
new documents appended).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragline.engine.atomic import atomic_directory, refuse_overlap, remove_stale_temporaries
from ragline.engine.data.chunking import chunk_document
from ragline.engine.data.corpus import detect_format, read_corpus
from ragline.engine.data.text import read_lines
from ragline.engine.errors import InputError
from ragline.engine.index.build import is_index, opened_components
from ragline.engine.index.component import index_component
from ragline.engine.index.docstore import DocStore, content_hash
from ragline.engine.index.layout import DOCSTORE, META, IndexDir
from ragline.engine.index.sharded_update import apply_to_shards
from ragline.engine.index.sharding import is_sharded
from ragline.engine.types import Document, Passage

log = logging.getLogger(__name__)

STAGING = ".incoming.sqlite"  # the corpus read for an update, inside the new folder until the swap


@dataclass
class Changes:
    """What to do to an index. ``documents`` are added or, when their id is
    known and their content differs, replaced."""

    documents: Iterable[Document] = ()
    delete: set[str] = field(default_factory=set)
    delete_missing: bool = False  # ``documents`` is the whole new corpus
    only_new: bool = False        # Index.add: a known id is an error
    only_known: bool = False      # Index.update: an unknown id is an error


def update_index(corpus: str | Path, out: str | Path, fmt: str = "auto", delete: Iterable[str] = (),
                 delete_missing: bool = False, batch_size: int = 4096, progress: bool = False,
                 encoding_errors: str = "strict") -> dict[str, Any]:
    """Bring the index at ``out`` up to date with ``corpus``: new ids are added,
    changed documents replaced, unchanged ones kept (not re-encoded); the ids
    in ``delete`` are removed, and with ``delete_missing`` every document that
    ``corpus`` lacks. Returns the new meta.json, whose ``last_update`` counts
    what changed."""
    corpus = Path(corpus)
    refuse_overlap(out, corpus)
    if fmt == "auto" and corpus.exists():
        fmt = detect_format(corpus, encoding_errors)
    changes = Changes(read_corpus(corpus, fmt, encoding_errors), set(delete), delete_missing)
    # With delete_missing the corpus is the whole collection, and the index's recorded corpus.
    source = {"corpus": str(corpus.resolve()), "corpus_format": fmt} if delete_missing else None
    return apply_changes(out, changes, batch_size, progress, source)


def read_ids(path: str | Path, encoding_errors: str = "strict") -> list[str]:
    """Document ids, one a line; blank lines and ``#`` comments are skipped."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file of ids to delete not found", path=path)
    return [line.strip() for _, line in read_lines(path, encoding_errors) if line.strip() and not line.lstrip().startswith("#")]


def apply_changes(out: str | Path, changes: Changes, batch_size: int = 4096, progress: bool = False,
                  source: dict[str, str] | None = None) -> dict[str, Any]:
    """Write the index at ``out`` changed by ``changes`` beside it and swap it
    in; ``source`` replaces the recorded corpus. Returns the new meta.json.
    A sharded index changes each shard this way (engine/index/sharded_update.py)."""
    out = Path(out).absolute()
    with exclusive_update(out):
        if is_sharded(out):
            meta = apply_to_shards(out, changes, write_changed, batch_size, progress, source)
        else:
            meta = write_changed(out, out, changes, batch_size, progress, source)
    log.info("updated %s: %s", out, meta["last_update"])
    return meta


def write_changed(old_path: Path, new_path: Path, changes: Changes, batch_size: int = 4096, progress: bool = False,
                  source: dict[str, str] | None = None) -> dict[str, Any]:
    """Write the index at ``old_path`` changed by ``changes`` into ``new_path``
    (the same path: swapped in), atomically. Returns its meta.json."""
    old = IndexDir.open(old_path)
    chunking = old.meta.get("chunking") or {}
    window, overlap = chunking.get("window"), chunking.get("overlap", 0)
    builders = [_builder_for(name, recorded) for name, recorded in old.meta.get("components", {}).items()]
    with atomic_directory(new_path, "index", recognise=is_index) as tmp:
        previous = DocStore(old.path / DOCSTORE)
        incoming = _Incoming(tmp / STAGING)
        try:
            incoming.read(changes.documents)
            plan = _plan(previous, incoming, changes)
            store = DocStore(tmp / DOCSTORE, create=True)
            try:
                built, n_passages, reused = _write(plan, previous, incoming, store, builders, old.path,
                                                   window, overlap, batch_size, progress)
            finally:
                store.close()
        finally:
            incoming.close()
            previous.close()
        meta = {**old.meta, **(source or {}),
                "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "documents": len(plan.order), "passages": n_passages, "components": built,
                "last_update": {**plan.counts, "passages_reused": reused, "passages_indexed": n_passages - reused}}
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


@contextlib.contextmanager
def exclusive_update(out: Path) -> Iterator[None]:
    """One update of ``out`` at a time: a lock on the index folder itself. A
    waiter that gets the lock of a folder an earlier update has since swapped
    out takes the new folder's lock instead."""
    remove_stale_temporaries(out)  # may put back an index stranded by a crash between two renames
    while True:
        if not is_index(out):
            IndexDir.open(out)  # raises IndexNotFound with the usual advice
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.path.samestat(os.fstat(fd), os.stat(out)):
                yield
                return
        finally:
            os.close(fd)


def _builder_for(name: str, recorded: dict[str, Any]):
    builder = index_component(name).builder
    return builder(**builder.settings_from_meta(recorded))


class _Incoming:
    """The corpus of an update, read once into SQLite beside the new index, so
    that it need not fit in memory; ids and content hashes are kept in memory."""

    def __init__(self, path: Path):
        self.path = path
        self._conn = sqlite3.connect(path)
        self._conn.execute("PRAGMA journal_mode=OFF")
        self._conn.execute("PRAGMA synchronous=OFF")
        self._conn.execute("CREATE TABLE docs (id TEXT PRIMARY KEY, title TEXT, text TEXT, origin TEXT, metadata TEXT)")
        self.hashes: dict[str, str] = {}  # in corpus order

    def read(self, documents: Iterable[Document]) -> None:
        pending = []
        for doc in documents:
            if doc.id in self.hashes:
                path, _, line = doc.origin.rpartition(":")
                raise InputError(f"duplicate document id {doc.id!r}", path=path or None,
                                 line=int(line) if line.isdigit() else None)
            self.hashes[doc.id] = content_hash(doc.id, doc.title, doc.text, doc.metadata)
            pending.append((doc.id, doc.title, doc.text, doc.origin, json.dumps(doc.metadata) if doc.metadata else None))
            if len(pending) >= 4096:
                self._conn.executemany("INSERT INTO docs VALUES (?,?,?,?,?)", pending)
                pending.clear()
        self._conn.executemany("INSERT INTO docs VALUES (?,?,?,?,?)", pending)

    def document(self, doc_id: str) -> Document:
        title, text, origin, metadata = self._conn.execute(
            "SELECT title, text, origin, metadata FROM docs WHERE id = ?", (doc_id,)).fetchone()
        return Document(doc_id, text, title, origin, json.loads(metadata) if metadata else None)

    def close(self) -> None:
        self._conn.close()
        self.path.unlink(missing_ok=True)


@dataclass
class _Plan:
    order: list[str]          # document ids of the new index, in row order
    new: set[str]             # ids whose passages come from the corpus (added or replaced)
    spans: dict[str, tuple[int, int]]  # old id -> (first row, passages) in the previous store
    hashes: dict[str, str]    # id -> content hash for the new store
    counts: dict[str, int]


def _plan(previous: DocStore, incoming: _Incoming, changes: Changes) -> _Plan:
    spans, old_hashes, given = previous.document_spans(), previous.document_hashes(), incoming.hashes
    if spans and not old_hashes:
        log.warning("this index was built before content hashes were kept: every document given counts as changed")
    _check(changes, spans, given)
    unknown = changes.delete - spans.keys()
    if unknown:
        log.warning("%d id(s) to delete are not in the index: %s", len(unknown), ", ".join(sorted(unknown)[:10]))
    new = {doc_id for doc_id, h in given.items() if old_hashes.get(doc_id) != h}
    if changes.delete_missing:
        order = list(given)
    else:
        order = [doc_id for doc_id in spans if doc_id not in changes.delete] + [d for d in given if d not in spans]
    if not order:
        raise InputError("after this update the index would hold no documents; nothing was changed")
    kept = set(order)
    counts = {
        "added": sum(1 for d in new if d not in spans),
        "replaced": sum(1 for d in new if d in spans),
        "unchanged": len(given) - len(new),
        "deleted": sum(1 for d in spans if d not in kept),
        "untouched": sum(1 for d in order if d not in given),
    }
    hashes = {d: given[d] if d in given else old_hashes[d] for d in order if d in given or d in old_hashes}
    return _Plan(order, new, spans, hashes, counts)


def _check(changes: Changes, spans: dict, given: dict) -> None:
    both = changes.delete & given.keys()
    if both:
        raise InputError(f"document {sorted(both)[0]!r} is both given and to be deleted; choose one")
    if changes.only_new and (known := [d for d in given if d in spans]):
        raise InputError(f"document {known[0]!r} is already in the index; use update to replace it")
    if changes.only_known and (unknown := [d for d in given if d not in spans]):
        raise InputError(f"document {unknown[0]!r} is not in the index; use add to add it")


def _write(plan: _Plan, previous: DocStore, incoming: _Incoming, store: DocStore, builders: list, previous_index: Path,
           window: int | None, overlap: int, batch_size: int, progress: bool) -> tuple[dict[str, Any], int, int]:
    """Feed the new store and every component in the plan's order; returns the
    components' recorded settings, the passages written and how many of them
    were reused."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with opened_components(builders, store.path.parent, previous_index) as opened:
        n_passages = reused = 0
        columns = (TextColumn("updating: {task.completed:,}/{task.total:,} documents"), BarColumn(),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        with Progress(*columns, disable=not progress, transient=True) as bar:
            task = bar.add_task("update", total=len(plan.order))
            for batch in _batches(plan, previous, incoming, window, overlap, batch_size):
                passages, rows, origins, documents = batch
                store.add(passages, origins)
                store.add_documents([d for d in documents if d[1] is not None])
                for builder in opened:
                    if builder.can_reuse:
                        builder.add(passages, rows)
                    else:
                        builder.add(passages)
                n_passages += len(passages)
                reused += sum(row is not None for row in rows)
                bar.update(task, advance=len(documents))
        store.commit()
        return {builder.name: builder.close() for builder in opened}, n_passages, reused


def _batches(plan: _Plan, previous: DocStore, incoming: _Incoming, window: int | None, overlap: int, batch_size: int):
    """``(passages, previous rows, origins, (doc_id, hash or None, origin) per document)``
    batches of about ``batch_size`` passages, whole documents each."""
    passages: list[Passage] = []
    rows: list[int | None] = []
    origins: list[str] = []
    documents: list[tuple[str, str, str]] = []
    for doc_id in plan.order:
        if doc_id in plan.new:
            doc = incoming.document(doc_id)
            chunks = chunk_document(doc, window, overlap)
            rows += [None] * len(chunks)
            origin = doc.origin
        else:
            first, count = plan.spans[doc_id]
            chunks = previous.passages_in_rows(first, count)
            rows += range(first, first + count)
            origin = ""
        passages += chunks
        origins += [origin] * len(chunks)
        documents.append((doc_id, plan.hashes.get(doc_id), origin))
        if len(passages) >= batch_size:
            yield passages, rows, origins, documents
            passages, rows, origins, documents = [], [], [], []
    if passages:
        yield passages, rows, origins, documents
