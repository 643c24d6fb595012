"""Building an index: stream the corpus once, feed every component, then
rename the finished folder into place.

Components (``bm25``, ``dense``, or any registered, see component.py) are
written by their ``IndexBuilder``: opened, fed every batch, closed; aborted
if anything fails.

Every batch is committed as it is fed: ``add`` returns once the component's
share of the batch is durable (or cheap to redo), then the document store
commits it. A build killed part-way resumes (``resume=True``, see
engine/index/resume.py) from its last committed batch: a component that can
continue its own work has ``builder.resume(folder, committed)`` (its folder as
the killed build left it, holding at least the first ``committed`` passages);
any other, BM25 among them (Lucene indexing is cheap next to encoding), is
opened afresh and fed the committed passages again from the document store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import inspect
import itertools
import json
import logging
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ragline.engine.atomic import atomic_directory, check_replaceable, refuse_overlap
from ragline.engine.data.chunking import passages_of
from ragline.engine.data.corpus import detect_format, read_corpus
from ragline.engine.errors import InputError
from ragline.engine.index.component import index_component
from ragline.engine.index.docstore import DocStore, content_hash
from ragline.engine.index.layout import DOCSTORE, FORMAT_VERSION, META
from ragline.engine.index.progress import documents_progress, estimate_documents
from ragline.engine.index.resume import Committed, Resumption, build_journal, remove_journal, write_journal
from ragline.engine.index.sharding import shard_of
from ragline.engine.types import Passage

log = logging.getLogger(__name__)

_REPLAY_BATCH = 4096  # committed passages fed again at a time to a component that cannot resume


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
    resume: bool = False,
    ray: str | None = None,
    workers: int | None = None,
    shard: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Index ``corpus`` into the folder ``out`` with the given components, e.g.
    ``{"bm25": {}, "dense": {"encoder": "all-MiniLM-L6-v2"}}``. Returns meta.json's content.
    ``encoding_errors="replace"`` reads bytes that are not UTF-8 as U+FFFD
    instead of refusing the corpus.

    ``resume=True`` carries on a build of ``out`` that was killed part-way, with
    the same corpus and settings (else ``InputError``), from its last committed
    batch, and writes what a clean build writes. With no such build to resume
    it logs a warning and builds from the start, so a job that may be killed
    can always be run again with ``resume=True``.

    ``ray`` (``auto``, ``local`` or a cluster's address) encodes the passages
    on a Ray actor pool of ``workers`` actors (default: one per GPU, else per
    CPU slot) instead of here; everything else, and what is written, stays as
    without it (engine/index/distributed.py).

    ``shard=(number, count)`` indexes only the documents that ``shard_of``
    assigns to shard ``number`` of ``count`` (engine/index/sharding.py; a
    sharded build calls this once per shard)."""
    corpus = Path(corpus)
    if not components:
        raise InputError("choose at least one index component (bm25, dense)")
    refuse_overlap(out, corpus)
    check_replaceable(Path(out), "index", is_index)
    if ray is not None:
        from ragline.engine.scale.ray_session import check_address  # (imports no Ray)

        check_address(ray)
    if fmt == "auto" and corpus.exists():
        fmt = detect_format(corpus, encoding_errors)
    builders = [index_component(name).builder(**dict(params)) for name, params in components.items()]
    hashes: list[tuple[str, str, str]] = []  # documents read since the last commit
    read = functools.partial(corpus_passages, corpus, fmt, encoding_errors, window, overlap, shard=shard)
    passages = read(hashes)
    settings = {name: _settings(index_component(name).builder, params) for name, params in components.items()}
    journal = build_journal(corpus, fmt, encoding_errors, window, overlap, settings, shard)
    resumption = Resumption(journal, passages, hashes, Path(out)) if resume else None

    with atomic_directory(out, "index", recognise=is_index, resume=resumption.accept if resumption else None) as tmp:
        committed = resumption.committed if resumption else None
        if resume and committed is None:
            log.warning("there is no interrupted build of %s to resume: building it from the start", out)
        store = _store(tmp, journal, committed)
        try:
            with opened_components(builders, tmp, resumed=store if committed is not None else None) as opened:
                total = estimate_documents(corpus, fmt) if progress else None
                skip = committed.passages if committed else 0
                with _batches(passages, read, hashes, opened, skip, batch_size, ray, workers) as batches:
                    n_docs, n_passages = _feed(batches, hashes, store, opened, committed or Committed(), progress, total)
                if n_passages == 0 and shard is not None:
                    raise InputError(f"no document of the corpus falls to shard {shard[0]} of {shard[1]}: "
                                     "use fewer shards", path=corpus)
                if n_passages == 0:
                    raise InputError("the corpus has no documents", path=corpus)
                store.commit()
                built = {builder.name: builder.close() for builder in opened}
            store.single_file()
        finally:
            store.close()
        remove_journal(tmp)
        meta = {
            "format_version": FORMAT_VERSION,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "corpus": str(corpus.resolve()),
            "corpus_format": fmt,
            "documents": n_docs,
            "passages": n_passages,
            "chunking": {"window": window, "overlap": overlap} if window else None,
            "components": built,
            **({"shard": {"number": shard[0], "count": shard[1]}} if shard else {}),
        }
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def _settings(builder_class, params: Mapping[str, Any]) -> dict[str, Any]:
    """A component's constructor arguments with its defaults filled in, as its builder spells them."""
    bound = inspect.signature(builder_class).bind(**params)
    bound.apply_defaults()
    return builder_class.canonical_settings(dict(bound.arguments))


def _store(folder: Path, journal: dict[str, Any], committed: Committed | None) -> DocStore:
    """The document store of a build: the resumed build's, or a new one whose
    every commit survives a kill, with the journal that makes it resumable."""
    if committed is not None:
        return DocStore(folder / DOCSTORE)
    store = DocStore(folder / DOCSTORE, create=True)
    store.durable_commits()
    write_journal(folder, journal)
    return store


@contextlib.contextmanager
def opened_components(builders: list, folder: Path, previous: Path | None = None,
                      resumed: DocStore | None = None) -> Iterator[list]:
    """Every builder opened in its subfolder of ``folder`` (and, for an update,
    given its folder of the ``previous`` index where it can reuse it; resuming
    a killed build, brought up to the passages committed in ``resumed``); if
    anything in the block fails, every builder opened so far is aborted."""
    opened = []
    try:
        for builder in builders:
            if resumed is None:
                builder.open(folder / builder.name)
                opened.append(builder)
            else:
                _bring_up(builder, folder / builder.name, resumed, opened)
            if previous is not None and builder.can_reuse:
                builder.reuse(previous / builder.name)
        yield opened
    except BaseException:
        for builder in opened:
            builder.abort()
        raise


def _bring_up(builder, path: Path, store: DocStore, opened: list) -> None:
    """Open ``builder`` on what a killed build left in ``path``, up to the
    passages committed in ``store``: it continues its own work where it can,
    else it starts again and is fed those passages from the store."""
    committed = store.count()
    if committed and builder.can_resume:
        builder.resume(path, committed)
        opened.append(builder)
        return
    shutil.rmtree(path, ignore_errors=True)
    builder.open(path)
    opened.append(builder)
    log.info("%s: indexing the %d passages committed before the interruption again", builder.name, committed)
    for first in range(0, committed, _REPLAY_BATCH):
        builder.add(store.passages_in_rows(first, min(_REPLAY_BATCH, committed - first)))


def is_index(path: Path) -> bool:
    """A ragline index written before folders carried the output marker."""
    return (path / META).is_file()


def corpus_passages(corpus: Path, fmt: str, encoding_errors: str, window: int | None, overlap: int,
                    hashes: list[tuple[str, str, str]], shard: tuple[int, int] | None = None
                    ) -> Iterator[tuple[Passage, str]]:
    """The (passage, origin) pairs a build indexes, in corpus order, noting
    each document's (id, content hash, origin) in ``hashes`` as it is read;
    with ``shard``, those of the documents assigned to it."""
    documents = read_corpus(corpus, fmt, encoding_errors)
    if shard is not None:
        number, count = shard
        documents = (doc for doc in documents if shard_of(doc.id, count) == number)
    return passages_of(_hashed(documents, hashes), window, overlap)


@contextlib.contextmanager
def _batches(passages, read, hashes, builders, skip: int, batch_size: int, ray: str | None, workers: int | None):
    """The batches to feed, each with what was computed for it elsewhere, by
    component (``{"dense": {"vectors": ...}}``): ``passages`` read here; or,
    with ``ray``, read again past the ``skip`` committed ones on the driver's
    node and encoded on a Ray actor pool."""
    if ray is not None:
        from ragline.engine.index.distributed import encoding_components, ray_batches  # Ray only when asked for

        encoders = encoding_components(builders)
        if encoders:
            with ray_batches(read, hashes, encoders, skip, batch_size, ray, workers) as batches:
                yield batches
            return
    yield ((batch, {}) for batch in _batched(passages, batch_size))


def _feed(batches, hashes, store, builders, committed: Committed, progress, total) -> tuple[int, int]:
    """Feed ``batches`` to the store and every builder, committing batch by
    batch; returns the documents and passages of the index (with those a
    resumed build had committed)."""
    n_docs, n_passages, last_doc = committed.documents, committed.passages, committed.last_doc
    with documents_progress(progress, "indexing", total, done=n_docs) as advance:
        for batch, computed in batches:
            fed = [p for p, _ in batch]
            store.add(fed, [origin for _, origin in batch])
            store.add_documents(hashes)
            hashes.clear()
            for builder in builders:
                # Each has made its share durable when it returns.
                builder.add(fed, **computed.get(builder.name, {}))
            store.commit()  # a build killed from here on resumes after this batch
            for p in fed:
                if p.doc_id != last_doc:
                    n_docs, last_doc = n_docs + 1, p.doc_id
            n_passages += len(fed)
            advance(n_docs)
    return n_docs, n_passages


def _hashed(documents, hashes: list[tuple[str, str, str]]):
    """``documents`` unchanged, noting each one's content hash as it passes."""
    for doc in documents:
        hashes.append((doc.id, content_hash(doc.id, doc.title, doc.text, doc.metadata), doc.origin))
        yield doc


def _batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch
