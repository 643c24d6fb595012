"""Updating a sharded index, all or nothing across its shards.

Each change goes to the shard that holds (or will hold) its document id
(``shard_of``). Every shard with something to change is written as a new
folder beside the old one, by the same copy-on-write update as an unsharded
index (update.py's ``write_changed``, handed in by update.py, which calls
this module: unchanged passages copied, only new and changed ones encoded,
BM25 re-indexed); then the root meta.json, which names the
shards' folders, is replaced in one step. A crash before that step leaves
the old index (the new folders are removed by the next update); after it,
the new one. The folders an update replaced stay until the next update
removes them: a reader (a restarted shard actor, a process that read the
old root a moment before) can still open the version it was reading. Shards
with nothing to change are not touched.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ragline.engine.atomic import MARKER, atomic_write_text
from ragline.engine.index.layout import META
from ragline.engine.index.sharding import ShardedIndex, root_meta, shard_folder, shard_of

log = logging.getLogger(__name__)


def apply_to_shards(root: Path, changes, write_changed: Callable[..., dict[str, Any]], batch_size: int = 4096,
                    progress: bool = False, source: dict[str, str] | None = None) -> dict[str, Any]:
    """``apply_changes`` (``changes``: an update.py ``Changes``) for the sharded
    index at ``root``, which the caller has locked; ``write_changed(old, new,
    changes, batch_size, progress, source)`` writes one shard's new folder.
    Returns the new root meta.json."""
    index = ShardedIndex.open(root)
    _remove_unnamed_shards(root, index.root.meta["shards"]["folders"])
    count = index.count
    documents: list[list] = [[] for _ in range(count)]
    for document in changes.documents:
        documents[shard_of(document.id, count)].append(document)
    deletes: list[set[str]] = [set() for _ in range(count)]
    for doc_id in changes.delete:
        deletes[shard_of(doc_id, count)].add(doc_id)
    folders = list(index.root.meta["shards"]["folders"])
    metas = [shard.meta for shard in index.shards]
    changed = [n for n in range(count) if documents[n] or deletes[n] or changes.delete_missing]
    written: list[Path] = []
    try:
        for number in changed:
            folder = _next_version(folders[number], number)
            log.info("updating shard %d of %d into %s", number, count, folder)
            part = dataclasses.replace(changes, documents=documents[number], delete=deletes[number])
            written.append(root / folder)
            metas[number] = write_changed(index.shards[number].path, root / folder, part, batch_size, progress, source)
            folders[number] = folder
        meta = root_meta(metas, folders, {"created": index.root.meta.get("created"), **(source or {}),
                                          "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                          "last_update": _summed_counts(metas, changed)})
        atomic_write_text(root / META, json.dumps(meta, indent=2) + "\n")  # the commit
    except BaseException:
        for path in written:
            shutil.rmtree(path, ignore_errors=True)
        raise
    log.info("updated shards %s of %s", changed, root)
    return meta


def _next_version(folder: str, number: int) -> str:
    """``shard-01`` → ``shard-01.2`` → ``shard-01.3``."""
    _, _, version = folder.partition(".")
    return shard_folder(number, int(version or 1) + 1)


def _summed_counts(metas: list[dict[str, Any]], changed: list[int]) -> dict[str, int]:
    """The update's counts over every shard; a shard left alone counts as untouched."""
    total: Counter[str] = Counter()
    for number, meta in enumerate(metas):
        if number in changed:
            total.update(meta["last_update"])
        else:
            total.update({"untouched": meta["documents"], "passages_reused": meta["passages"]})
    for name in ("added", "replaced", "unchanged", "deleted", "untouched", "passages_reused", "passages_indexed"):
        total.setdefault(name, 0)
    return dict(total)


def _remove_unnamed_shards(root: Path, named: list[str]) -> None:
    """Shard folders that the root does not name: versions the last update
    replaced, and new ones of an update that crashed before its commit."""
    for folder in root.glob("shard-*"):
        if folder.name not in named and folder.is_dir() and (folder / MARKER).is_file():
            log.info("removing %s, replaced by an update or left by an interrupted one", folder)
            shutil.rmtree(folder, ignore_errors=True)
