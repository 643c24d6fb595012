"""Building an index: stream the corpus once, feed every component, then
rename the finished folder into place.

Components (``bm25``, ``dense``, or any registered in the
``ragline.index_builders`` entry-point group) follow one small protocol::

    builder.open(folder)        # before the first passage
    builder.add(passages)       # a batch at a time
    builder.close() -> dict     # finish; settings to record in meta.json
    builder.abort()             # release resources after a failure

Updates (engine/index/update.py) rebuild a component from what it recorded:
``Builder.settings_from_meta(recorded) -> dict`` gives the constructor's
arguments. A component that can reuse its previous work also has
``builder.reuse(previous_folder)``, and is then fed
``builder.add(passages, previous_rows)``: each passage's row in the previous
index when it is unchanged, else ``None``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ragline.engine.atomic import atomic_directory, check_replaceable, refuse_overlap
from ragline.engine.data.chunking import passages_of
from ragline.engine.data.corpus import detect_format, read_corpus
from ragline.engine.errors import InputError
from ragline.engine.index.docstore import DocStore, content_hash
from ragline.engine.index.layout import DOCSTORE, FORMAT_VERSION, META
from ragline.engine.registry import INDEX_BUILDERS, lookup


def build_index(
    corpus: str | Path,
    out: str | Path,
    components: Mapping[str, Mapping[str, Any]],
    fmt: str = "auto",
    window: int | None = None,
    overlap: int = 0,
    batch_size: int = 4096,
    progress: bool = False,
    encoding_errors: str = "strict",
) -> dict[str, Any]:
    """Index ``corpus`` into the folder ``out`` with the given components, e.g.
    ``{"bm25": {}, "dense": {"encoder": "all-MiniLM-L6-v2"}}``. Returns meta.json's content.
    ``encoding_errors="replace"`` reads bytes that are not UTF-8 as U+FFFD
    instead of refusing the corpus."""
    corpus = Path(corpus)
    if not components:
        raise InputError("choose at least one index component (bm25, dense)")
    refuse_overlap(out, corpus)
    check_replaceable(Path(out), "index", is_index)
    if fmt == "auto" and corpus.exists():
        fmt = detect_format(corpus, encoding_errors)
    builders = [lookup(INDEX_BUILDERS, name)(**dict(params)) for name, params in components.items()]
    documents = read_corpus(corpus, fmt, encoding_errors)

    with atomic_directory(out, "index", recognise=is_index) as tmp:
        store = DocStore(tmp / DOCSTORE, create=True)
        try:
            with opened_components(builders, tmp) as opened:
                n_docs, n_passages = _feed(documents, store, opened, window, overlap, batch_size, progress)
                if n_passages == 0:
                    raise InputError("the corpus has no documents", path=corpus)
                store.commit()
                built = {builder.name: builder.close() for builder in opened}
        finally:
            store.close()
        meta = {
            "format_version": FORMAT_VERSION,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "corpus": str(corpus.resolve()),
            "corpus_format": fmt,
            "documents": n_docs,
            "passages": n_passages,
            "chunking": {"window": window, "overlap": overlap} if window else None,
            "components": built,
        }
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


@contextlib.contextmanager
def opened_components(builders: list, folder: Path, previous: Path | None = None) -> Iterator[list]:
    """Every builder opened in its subfolder of ``folder`` (and, for an update,
    given its folder of the ``previous`` index where it can reuse it); if
    anything in the block fails, every builder opened so far is aborted."""
    opened = []
    try:
        for builder in builders:
            builder.open(folder / builder.name)
            opened.append(builder)
            if previous is not None and hasattr(builder, "reuse"):
                builder.reuse(previous / builder.name)
        yield opened
    except BaseException:
        for builder in opened:
            builder.abort()
        raise


def is_index(path: Path) -> bool:
    """A ragline index written before folders carried the output marker."""
    return (path / META).is_file()


def _feed(documents, store, builders, window, overlap, batch_size, progress) -> tuple[int, int]:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    n_docs = 0
    n_passages = 0
    last_doc = None
    hashes: list[tuple[str, str, str]] = []  # documents read since the last batch
    columns = (SpinnerColumn(), TextColumn("indexing: {task.completed:,} passages"), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("index", total=None)
        for batch in _batched(passages_of(_hashed(documents, hashes), window, overlap), batch_size):
            passages = [p for p, _ in batch]
            store.add(passages, [origin for _, origin in batch])
            store.add_documents(hashes)
            hashes.clear()
            for builder in builders:
                builder.add(passages)
            for p in passages:
                if p.doc_id != last_doc:
                    n_docs, last_doc = n_docs + 1, p.doc_id
            n_passages += len(passages)
            bar.update(task, completed=n_passages)
    return n_docs, n_passages


def _hashed(documents, hashes: list[tuple[str, str, str]]):
    """``documents`` unchanged, noting each one's content hash as it passes."""
    for doc in documents:
        hashes.append((doc.id, content_hash(doc.id, doc.title, doc.text), doc.origin))
        yield doc


def _batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch
