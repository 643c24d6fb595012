"""The on-disk layout of an index: one folder holding

    meta.json          what was built, from which corpus, with which settings
    docstore.sqlite    passage texts (engine/index/docstore.py)
    <component>/       one folder per retriever component (bm25/, dense/)

Folders are built beside their final place and renamed into it (see
engine/index/build.py), so an index is either complete or absent. An update
(engine/index/update.py) swaps a whole new folder in the same way; a reader
that opens its files one by one uses ``read_consistently``, so that all of
them come from one version.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ragline.engine.errors import IndexNotFound, RaglineError
from ragline.engine.index.docstore import DocStore

log = logging.getLogger(__name__)
T = TypeVar("T")

FORMAT_VERSION = 1
META = "meta.json"
DOCSTORE = "docstore.sqlite"

# One DocStore per built index, shared by every stage that reads it, so hits
# from several retrievers over one index resolve with one look-up. Held
# weakly: a store (and its SQLite connection) goes when no stage or hit uses it.
_open_stores: weakref.WeakValueDictionary[tuple[str, int, int], DocStore] = weakref.WeakValueDictionary()
_open_stores_lock = threading.Lock()


@dataclass(frozen=True)
class IndexDir:
    path: Path
    meta: dict[str, Any]
    identity: tuple[int, int] | None = field(default=None, compare=False)  # the folder's (device, inode) when opened

    @classmethod
    def open(cls, path: str | Path) -> IndexDir:
        path = Path(path)
        meta_path = path / META
        if not meta_path.is_file():
            raise IndexNotFound(f"no ragline index at {path} (missing {META}); build one with 'ragline index'")
        identity = _identity(path)
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise RaglineError(
                f"index {path} has format version {meta.get('format_version')}, this ragline reads "
                f"{FORMAT_VERSION}; rebuild it"
            )
        return cls(path, meta, identity)

    def replaced(self) -> bool:
        """Whether another folder (an update, a rebuild) has taken this one's place since it was opened."""
        try:
            return _identity(self.path) != self.identity
        except FileNotFoundError:
            return True

    def _not_sharded(self) -> None:
        """A sharded index's root holds no components or store of its own (engine/index/sharding.py)."""
        if "shards" in self.meta:
            raise RaglineError(f"index {self.path} is sharded: this reads one index; its shards are the folders "
                               f"{', '.join(self.meta['shards'].get('folders', []))} in it")

    @property
    def components(self) -> list[str]:
        return sorted(self.meta.get("components", {}))

    def component(self, name: str) -> tuple[Path, dict[str, Any]]:
        """The folder and recorded settings of one component, or a clear error."""
        self._not_sharded()
        if name not in self.meta.get("components", {}):
            have = ", ".join(self.components) or "none"
            raise IndexNotFound(f"index {self.path} has no {name} component (it has: {have})")
        return self.path / name, self.meta["components"][name]

    def docstore(self) -> DocStore:
        self._not_sharded()
        # Keyed by the file's identity: a rebuilt index is a new file, even
        # within the same second.
        stat = (self.path / DOCSTORE).stat()
        key = (str(self.path.resolve()), stat.st_ino, stat.st_mtime_ns)
        with _open_stores_lock:
            store = _open_stores.get(key)
            if store is None:
                store = _open_stores[key] = DocStore(self.path / DOCSTORE)
            return store


def _identity(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def read_consistently(path: str | Path, read: Callable[[IndexDir], T], attempts: int = 5) -> T:
    """``read(index)`` from one version of the index at ``path``: when an update
    swapped the folder while ``read`` was opening its files (it failed, or it
    may have mixed two versions), read again from the new one."""
    for attempt in range(1, attempts + 1):
        index = IndexDir.open(path)
        try:
            result = read(index)
        except Exception:
            if attempt < attempts and index.replaced():
                log.info("index %s was replaced while being opened; opening the new one", path)
                continue
            raise
        if not index.replaced():
            return result
        log.info("index %s was replaced while being opened; opening the new one", path)
    raise RaglineError(f"index {path} kept being replaced while it was opened ({attempts} times); try again")
