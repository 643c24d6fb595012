"""Where prefilled blocks live between queries.

Entries are keyed by (model id, exact token ids of the block): a block from
another model or tokenizer can never be found, whatever its text. Two tiers:

- memory: up to ``memory_bytes`` of tensors, least recently used evicted;
- disk (optional ``directory``): one safetensors file per entry holding one
  tensor (the block stacked: ``BlockKV.stacked``), written to a temporary
  name and renamed, so a crash never leaves a half entry; it survives
  restarts. A read maps the file instead of copying it (``read_stacked``). Each entry carries a checksum of its tensors' bytes
  (engine/integrity.py), checked when it is read. A file that cannot be
  read, does not match its key or its checksum is deleted, logged and counted
  as ``discarded`` (the block is then recomputed), never used and never an
  error.

One lock guards the memory tier, so threads of one process may share a store.
Counters (hits per tier, misses, bytes held) feed the generator's trace.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ragline.engine.integrity import digest_tensors
from ragline.generators.kv_reuse.block_attention import BlockKV

log = logging.getLogger(__name__)

# A block file holds one tensor, "kv": (layers, 2, 1, kv_heads, length, head_dim).
# Files of another format (per-layer tensors, before 2026-12) are discarded and recomputed.
FORMAT = "stacked-1"


def block_key(model_id: str, token_ids: Sequence[int]) -> str:
    digest = hashlib.sha256(model_id.encode() + b"\0" + b",".join(str(t).encode() for t in token_ids))
    return digest.hexdigest()


class BlockStore:
    def __init__(self, model_id: str, memory_bytes: int = 2 << 30, directory: str | Path | None = None,
                 verify: bool = True):
        """``verify=False`` skips the checksum check on reads: for measuring its cost only."""
        self.model_id = model_id
        self.memory_bytes = memory_bytes
        self.directory = Path(directory) if directory else None
        self.verify = verify
        self._memory: OrderedDict[str, BlockKV] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()
        self.stats = {"memory_hits": 0, "disk_hits": 0, "misses": 0, "evictions": 0, "discarded": 0}

    @property
    def bytes_held(self) -> int:
        return self._held

    def key_of(self, token_ids: Sequence[int]) -> str:
        return block_key(self.model_id, token_ids)

    def get_or_compute(self, token_ids: Sequence[int], compute: Callable[[], BlockKV], key: str | None = None) -> BlockKV:
        """The block of ``token_ids`` (``key``: its ``key_of``, if already known)."""
        return self.get_or_compute_many([token_ids], [key or self.key_of(token_ids)], lambda _: [compute()])[0]

    def get_or_compute_many(self, token_ids: Sequence[Sequence[int]], keys: Sequence[str],
                            compute: Callable[[list[int]], list[BlockKV]]) -> list[BlockKV]:
        """``get_or_compute`` for many blocks (``keys``: their ``key_of``), the
        missing ones computed in one call: ``compute(indexes)`` returns the
        blocks of those indexes (each missing key once)."""
        found: dict[str, BlockKV] = {}
        missing: dict[str, int] = {}
        for index, (ids, key) in enumerate(zip(token_ids, keys)):
            if key in found or key in missing:
                continue
            with self._lock:
                block = self._memory.get(key)
                if block is not None:
                    self._memory.move_to_end(key)
                    self.stats["memory_hits"] += 1
            if block is None and (block := self._read_disk(key, ids)) is not None:
                self.stats["disk_hits"] += 1
            if block is None:
                missing[key] = index
                continue
            self._remember(key, block)
            found[key] = block
        if missing:
            self.stats["misses"] += len(missing)
            for key, block in zip(missing, compute(list(missing.values()))):
                self._write_disk(key, block)
                self._remember(key, block)
                found[key] = block
        return [found[key] for key in keys]

    def served_by_layout(self, keys: Sequence[str]) -> None:
        """Blocks an assembled layout already holds (``layout_store``): counted as
        memory hits, and kept recent here since they are in use."""
        with self._lock:
            for key in keys:
                if key in self._memory:
                    self._memory.move_to_end(key)
            self.stats["memory_hits"] += len(keys)

    def _remember(self, key: str, block: BlockKV) -> None:
        with self._lock:
            if key in self._memory:
                return
            self._memory[key] = block
            self._held += block.nbytes
            while self._held > self.memory_bytes and len(self._memory) > 1:
                _, evicted = self._memory.popitem(last=False)
                self._held -= evicted.nbytes
                self.stats["evictions"] += 1

    # -- disk tier ---------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def _read_disk(self, key: str, token_ids: Sequence[int]) -> BlockKV | None:
        if self.directory is None:
            return None
        path = self._path(key)
        if not path.exists():
            return None
        try:
            meta, stacked = read_stacked(path)
            if meta.get("model") != self.model_id or json.loads(meta.get("token_ids", "null")) != list(token_ids):
                raise ValueError("entry does not match its key")
            if self.verify and meta.get("digest") != digest_tensors([stacked]):
                raise ValueError("its checksum does not match its tensors (damaged, or written without one)")
        except Exception as err:  # unreadable, truncated or foreign: recompute instead of failing generation
            log.warning("discarding the cached block %s (%s: %s); it will be recomputed", path, type(err).__name__, err)
            self.stats["discarded"] += 1
            path.unlink(missing_ok=True)
            return None
        return BlockKV.from_stacked(tuple(token_ids), stacked)

    def _write_disk(self, key: str, block: BlockKV) -> None:
        if self.directory is None:
            return
        from safetensors.torch import save_file

        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        stacked = (block.stacked if block.stacked is not None else BlockKV.of(block.token_ids, block.keys, block.values).stacked)
        if stacked is None:
            return  # layers of different shapes: kept in memory only
        stacked = stacked.contiguous().cpu()
        meta = {"model": self.model_id, "token_ids": json.dumps(list(block.token_ids)), "format": FORMAT,
                "digest": digest_tensors([stacked])}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            save_file({"kv": stacked}, str(tmp), metadata=meta)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def to_device(self, block: BlockKV, device: torch.device) -> BlockKV:
        if all(t.device == device for t in block.keys):
            return block
        if block.stacked is not None:
            return BlockKV.from_stacked(block.token_ids, block.stacked.to(device))
        return BlockKV(block.token_ids, [t.to(device) for t in block.keys], [t.to(device) for t in block.values])


def read_stacked(path: Path) -> tuple[dict[str, str], torch.Tensor]:
    """A block file's metadata and its one tensor, mapped from the file rather
    than read into memory: the layout's copy is the only copy it takes. The
    mapping is private (copy-on-write), and entries are replaced by renaming,
    never rewritten in place, so the file under it never changes."""
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    header_length = int.from_bytes(mapped[:8], "little")
    header = json.loads(mapped[8:8 + header_length])
    meta = header.pop("__metadata__", {}) or {}
    if meta.get("format") != FORMAT or set(header) != {"kv"}:
        raise ValueError(f"not a block of format {FORMAT}")
    entry = header["kv"]
    dtype = _DTYPES[entry["dtype"]]
    start, end = entry["data_offsets"]
    shape = entry["shape"]
    count = math.prod(shape)
    if end - start != count * dtype.itemsize or 8 + header_length + end > len(mapped):
        raise ValueError("its tensor's size does not match the file (truncated?)")
    tensor = torch.frombuffer(mapped, dtype=dtype, count=count, offset=8 + header_length + start)
    return meta, tensor.reshape(shape)


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
