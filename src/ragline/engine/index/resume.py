"""Resuming a build that was killed part-way (``build_index(..., resume=True)``).

A build writes into a temporary folder beside its output (engine/atomic.py)
and commits as it goes, batch by batch:

- the document store is a SQLite file with a write-ahead log, and each batch
  is one transaction: the passages (and document hashes) it holds are exactly
  the committed ones, whatever moment the process died at;
- every component has made its share of a batch durable before the batch is
  committed (the dense builder syncs its embeddings file), so a component
  holds at least the committed passages, and may drop what lies past them;
- a journal (``build-journal.json``), written once before the first batch,
  says which build this is: corpus, format, chunking and component settings.

Resuming takes such a folder (its build's process gone) whose journal names
the same build, reads the corpus again past the committed passages, checking
that they are exactly what the corpus gives now, and continues from there. The
result is what a clean build writes: the committed prefix is verified, not
trusted, so a corpus changed after it (appended to, say) is simply indexed as
it is now, and one changed inside it is refused. How each component continues
is build.py's business (``builder.resume``, or a rebuild from the stored
passages).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragline.engine.atomic import atomic_write_text
from ragline.engine.errors import InputError
from ragline.engine.index.docstore import DocStore
from ragline.engine.index.layout import DOCSTORE, FORMAT_VERSION
from ragline.engine.types import Passage

log = logging.getLogger(__name__)

JOURNAL = "build-journal.json"
JOURNAL_VERSION = 1
_VERIFY_PAGE = 4096  # committed passages read back at a time


@dataclass(frozen=True)
class Committed:
    """What an interrupted build had committed."""

    passages: int = 0
    documents: int = 0
    last_doc: str | None = None  # the document of the last committed passage (its chunks may go on)


def build_journal(corpus: Path, fmt: str, encoding_errors: str, window: int | None, overlap: int,
                  components: Mapping[str, Mapping[str, Any]], shard: tuple[int, int] | None = None) -> dict[str, Any]:
    """Everything that decides what a build writes, as it reads back from JSON;
    ``components`` holds each one's settings with its defaults filled in, so
    that the same settings given two ways compare equal. The batch size is not
    in it: batches decide when work is committed, not what is written."""
    journal = {
        "journal_version": JOURNAL_VERSION,
        "index_format": FORMAT_VERSION,
        "corpus": str(corpus.resolve()),
        "corpus_format": fmt,
        "encoding_errors": encoding_errors,
        "chunking": {"window": window, "overlap": overlap} if window else None,
        "components": {name: dict(params) for name, params in components.items()},
        **({"shard": list(shard)} if shard else {}),
    }
    return json.loads(json.dumps(journal, default=str))


def write_journal(folder: Path, journal: dict[str, Any]) -> None:
    atomic_write_text(folder / JOURNAL, json.dumps(journal, indent=2) + "\n")


def remove_journal(folder: Path) -> None:
    """The journal is the build's, not the index's: gone before the swap."""
    (folder / JOURNAL).unlink(missing_ok=True)


class Resumption:
    """Decides whether an abandoned build folder is this build's, and reads the
    corpus past its committed passages. ``accept`` is the check that
    ``atomic_directory(resume=...)`` runs; after it accepted a folder,
    ``committed`` says what was done and ``passages`` continues after it."""

    def __init__(self, journal: dict[str, Any], passages: Iterator[tuple[Passage, str]],
                 hashes: list[tuple[str, str, str]], out: Path):
        self.journal = journal
        self.passages = passages  # (passage, origin) pairs of the corpus, as a build reads them
        self.hashes = hashes      # filled with (doc_id, hash, origin) as ``passages`` reads documents
        self.out = out
        self.committed: Committed | None = None

    def accept(self, folder: Path) -> bool:
        """True: ``folder`` continues this build. False: it holds nothing to
        continue (it died before its journal). ``InputError``: it is another
        build's; the folder is then left as it is."""
        recorded = _read_journal(folder)
        if recorded is None or not (folder / DOCSTORE).is_file():
            log.info("%s holds no journal of its build: nothing to resume there", folder)
            return False
        if recorded != self.journal:
            differ = ", ".join(_differences(recorded, self.journal))
            raise InputError(f"the interrupted build of {self.out} was made with other settings ({differ} differ); "
                             "build without --resume to start over, or resume with the same settings")
        store = DocStore(folder / DOCSTORE)
        try:
            self.committed = _skip_committed(self.passages, self.hashes, store, self.out)
        finally:
            store.close()
        return True


def _read_journal(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / JOURNAL).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two journals differ, as dotted paths (``components.dense.encoder``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [found for key in sorted(a.keys() | b.keys())
                for found in _differences(a.get(key), b.get(key), f"{path}.{key}" if path else key)]
    return [] if a == b else [path]


def _skip_committed(passages: Iterator[tuple[Passage, str]], hashes: list[tuple[str, str, str]], store: DocStore,
                    out: Path) -> Committed:
    """Read past the committed passages of ``passages``, checking each against
    the store (id, document, text, title, offsets) and each of their documents'
    content hashes. ``hashes`` is emptied: those documents are recorded already."""
    total = store.count()
    done = 0
    last: Passage | None = None
    while done < total:
        for stored in store.passages_in_rows(done, min(_VERIFY_PAGE, total - done)):
            read = next(passages, None)
            if read is None or read[0] != stored:
                raise _changed(out, f"passage {stored.id!r} is not what it was")
            last = stored
            done += 1
    recorded = store.document_hashes()
    for doc_id, content_hash, _ in hashes:
        if recorded.get(doc_id) != content_hash:
            raise _changed(out, f"document {doc_id!r} is not what it was")
    if len(hashes) != len(recorded):
        raise _changed(out, "its documents are not the ones committed")
    hashes.clear()
    return Committed(total, len(recorded), last.doc_id if last else None)


def _changed(out: Path, what: str) -> InputError:
    return InputError(f"the corpus has changed since the interrupted build of {out} ({what}); "
                      "build without --resume to start over")
