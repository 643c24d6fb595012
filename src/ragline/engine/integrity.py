"""Checksums of what ragline keeps on disk: written with each entry, checked
before the entry is used. A KV block, a converted model or an exported
encoder whose bytes changed (a flipped sector, a truncated copy, a hand
edit) must be recomputed, never used; an artifact a user trained is refused
with its file name.

xxHash's XXH3-128: a non-cryptographic hash at memory speed (the point is
damage, not an adversary with write access to the cache), so checking a
block costs little next to reading it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import xxhash

_CHUNK = 1 << 22


def digest_bytes(data: bytes | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def digest_tensors(tensors: Iterable) -> str:
    """One digest of the raw bytes of ``tensors`` in order (torch tensors on
    the CPU; their dtype and shape are the caller's to record)."""
    import torch

    state = xxhash.xxh3_128()
    for tensor in tensors:
        flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        state.update(flat.numpy())
    return state.hexdigest()


def digest_file(path: str | Path) -> str:
    state = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            state.update(chunk)
    return state.hexdigest()


MANIFEST = "digests.json"


def write_manifest(folder: str | Path) -> None:
    """Record the digest of every file in ``folder`` (written last, inside the
    folder's atomic build, so a folder with a manifest is complete)."""
    import json

    folder = Path(folder)
    digests = {str(path.relative_to(folder)): digest_file(path)
               for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps(digests, indent=1))


def damage_in(folder: str | Path) -> str | None:
    """What is wrong with ``folder`` against its manifest (a file missing,
    changed, or no manifest at all), or None when every file is intact."""
    import json

    folder = Path(folder)
    try:
        digests = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"it has no readable {MANIFEST}"
    for name, expected in digests.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if digest_file(path) != expected:
            return f"{name} does not match its checksum"
    return None
