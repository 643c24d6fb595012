"""The on-disk layout of an index: one folder holding

    meta.json          what was built, from which corpus, with which settings
    docstore.sqlite    passage texts (engine/index/docstore.py)
    <component>/       one folder per retriever component (bm25/, dense/)

Folders are built beside their final place and renamed into it (see
engine/index/build.py), so an index is either complete or absent.
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragline.engine.errors import IndexNotFound, RaglineError
from ragline.engine.index.docstore import DocStore

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

    @classmethod
    def open(cls, path: str | Path) -> IndexDir:
        path = Path(path)
        meta_path = path / META
        if not meta_path.is_file():
            raise IndexNotFound(f"no ragline index at {path} (missing {META}); build one with 'ragline index'")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise RaglineError(
                f"index {path} has format version {meta.get('format_version')}, this ragline reads "
                f"{FORMAT_VERSION}; rebuild it"
            )
        return cls(path, meta)

    @property
    def components(self) -> list[str]:
        return sorted(self.meta.get("components", {}))

    def component(self, name: str) -> tuple[Path, dict[str, Any]]:
        """The folder and recorded settings of one component, or a clear error."""
        if name not in self.meta.get("components", {}):
            have = ", ".join(self.components) or "none"
            raise IndexNotFound(f"index {self.path} has no {name} component (it has: {have})")
        return self.path / name, self.meta["components"][name]

    def docstore(self) -> DocStore:
        # Keyed by the file's identity: a rebuilt index is a new file, even
        # within the same second.
        stat = (self.path / DOCSTORE).stat()
        key = (str(self.path.resolve()), stat.st_ino, stat.st_mtime_ns)
        with _open_stores_lock:
            store = _open_stores.get(key)
            if store is None:
                store = _open_stores[key] = DocStore(self.path / DOCSTORE)
            return store
