"""A sharded index: one folder holding N complete indexes (shards), each over
the documents whose id hashes to it, and a meta.json that names them.

    meta.json      the whole collection's: components and settings, document
                   and passage counts, and ``shards``: how documents are
                   assigned and which folder holds each shard
    shard-00/      a complete index (meta.json, docstore.sqlite, bm25/, dense/)
    shard-01/      ...

Assignment is by document id (``shard_of``: a hash, not the order read), so
a document's passages stay together and an update of a document goes to the
shard that holds it, however the corpus is ordered or split.

The root meta.json is the one thing an update replaces in place: changed
shards are written as new folders beside the old ones (``shard-01.2``, the
second version of shard 1), then the root meta.json is swapped to name them
(engine/index/sharded_update.py). A reader that has read the root's meta.json
therefore sees one consistent set of shards (the versions an update replaced
stay until the next update, for readers still opening them), and a crash at
any moment leaves the old set or the new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragline.engine.errors import RaglineError
from ragline.engine.index.layout import META, IndexDir

log = logging.getLogger(__name__)

# The assignment's name, recorded: a reader refuses an index assigned another way.
ASSIGNMENT = "blake2b-64(document id) mod shards"


def shard_of(doc_id: str, shards: int) -> int:
    """The shard that holds document ``doc_id`` (stable across processes, runs and machines)."""
    digest = hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def shard_folder(number: int, version: int = 1) -> str:
    """``shard-03`` for the first version of shard 3; ``shard-03.2`` for its second."""
    return f"shard-{number:02d}" if version == 1 else f"shard-{number:02d}.{version}"


def is_sharded(path: str | Path) -> bool:
    """Whether ``path`` is a sharded index (its meta.json names shards)."""
    meta_path = Path(path) / META
    if not meta_path.is_file():
        return False
    try:
        return "shards" in json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class ShardedIndex:
    """The root of a sharded index and its shards, checked to belong together."""

    root: IndexDir
    shards: tuple[IndexDir, ...]

    @classmethod
    def open(cls, path: str | Path, attempts: int = 5) -> ShardedIndex:
        """The shards the root's meta.json names, each opened and checked to be
        the shard it is named as, with the root's settings. An update that
        commits meanwhile (the root then names other folders) is read again."""
        for attempt in range(1, attempts + 1):
            root = IndexDir.open(path)
            try:
                return cls(root, tuple(_open_shards(root)))
            except RaglineError:
                if attempt == attempts or IndexDir.open(path).meta == root.meta:
                    raise
                log.info("sharded index %s was updated while being opened; opening the new version", path)
        raise AssertionError("unreachable")

    @property
    def count(self) -> int:
        return len(self.shards)


def _open_shards(root: IndexDir) -> list[IndexDir]:
    record = root.meta.get("shards")
    if not isinstance(record, dict):
        raise RaglineError(f"index {root.path} is not sharded")
    folders, count = record.get("folders"), record.get("count")
    if record.get("assignment") != ASSIGNMENT or not isinstance(folders, list) or len(folders) != count or not count:
        raise RaglineError(f"index {root.path}: its meta.json's shards record is not one this ragline reads: {record}")
    shards = []
    for number, folder in enumerate(folders):
        shard = IndexDir.open(root.path / folder)
        if shard.meta.get("shard") != {"number": number, "count": count}:
            raise RaglineError(f"index {root.path}: {folder} is not shard {number} of {count} "
                               f"(its meta.json says {shard.meta.get('shard')})")
        if _settings(shard.meta) != _settings(root.meta):
            raise RaglineError(f"index {root.path}: {folder} was built with other settings than the index")
        shards.append(shard)
    return shards


def _settings(meta: dict[str, Any]) -> dict[str, Any]:
    """What must be equal across the shards of one index: chunking, and each
    component's recorded settings other than its counts."""
    return {"chunking": meta.get("chunking"),
            "components": {name: {k: v for k, v in recorded.items() if k not in _PER_SHARD}
                           for name, recorded in meta.get("components", {}).items()}}


# Recorded per component but different in every shard (what each holds, and
# the encoder check's stamp, the same encoder's anyway).
_PER_SHARD = {"count", "encoded", "reused", "factory"}  # (IVF's list count follows the shard's size)


def root_meta(shard_metas: list[dict[str, Any]], folders: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    """The root meta.json over shards with these meta.jsons, in folders ``folders``."""
    first = shard_metas[0]
    components = {name: {**recorded, **({"count": sum(m["components"][name].get("count", 0) for m in shard_metas)}
                                        if "count" in recorded else {})}
                  for name, recorded in first["components"].items()}
    return {
        **{k: v for k, v in first.items() if k not in ("shard", "components", "documents", "passages", "last_update", "updated")},
        **extra,
        "documents": sum(m["documents"] for m in shard_metas),
        "passages": sum(m["passages"] for m in shard_metas),
        "components": components,
        "shards": {"count": len(folders), "assignment": ASSIGNMENT, "folders": folders},
    }
