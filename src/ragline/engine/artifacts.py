"""Small JSON artifacts that stages load (a Sentinel probe, an AttnRank
profile): written atomically with a format tag and a checksum of their
fields, read back with errors that say which file is wrong and how to make a
right one. A file whose fields no longer match its checksum (edited or
damaged after it was written) is refused; one written before artifacts had
checksums loads as before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ragline.engine.atomic import atomic_write_text
from ragline.engine.errors import InputError
from ragline.engine.integrity import digest_bytes


def write_artifact(path: str | Path, format_tag: str, fields: dict[str, Any]) -> None:
    fields = json.loads(json.dumps(fields))  # as it will read back: tuples are lists
    atomic_write_text(path, json.dumps({"format": format_tag, **fields, "checksum": _checksum(fields)}, indent=1))


def _checksum(fields: dict[str, Any]) -> str:
    return digest_bytes(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode())


def read_artifact(path: str | Path, format_tag: str, what: str, how_to_make: str) -> dict[str, Any]:
    """The artifact's fields (without the tag). ``what`` names it in errors
    ("Sentinel probe"); ``how_to_make`` is the command that writes one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no {what} here (make one with '{how_to_make}')") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}: not a {what} (invalid JSON: {err.msg})") from None
    if not isinstance(data, dict) or data.pop("format", None) != format_tag:
        raise InputError(f"{path}: not a {what} (expected format {format_tag!r})")
    checksum = data.pop("checksum", None)
    if checksum is not None and checksum != _checksum(data):
        raise InputError(f"{path}: this {what} was changed or damaged after it was written (its checksum does not "
                         f"match); make it again with '{how_to_make}'")
    return data


def load_artifact(cls, path: str | Path, format_tag: str, what: str, how_to_make: str):
    """``cls(**fields)`` of the artifact at ``path`` (see ``read_artifact``);
    fields that do not fit ``cls`` make it a malformed ``what``."""
    data = read_artifact(path, format_tag, what, how_to_make)
    try:
        return cls(**data)
    except TypeError as err:
        raise InputError(f"{path}: malformed {what} ({err})") from None
