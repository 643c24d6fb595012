"""Line-numbered text from files of any bytes, for every data reader.

Files are read as bytes and decoded line by line, so a byte that is not UTF-8,
or a ``.gz`` file that is damaged, is reported as ``file:line`` (an
``InputError``) instead of a traceback. ``encoding_errors="replace"`` reads bad
bytes as U+FFFD instead, with a logged warning.
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from ragline.engine.errors import InputError

logger = logging.getLogger(__name__)

ENCODING_ERRORS = ("strict", "replace")
_BOM = "\ufeff"


def check_encoding_errors(encoding_errors: str) -> None:
    if encoding_errors not in ENCODING_ERRORS:
        raise InputError(f"encoding_errors must be one of {', '.join(ENCODING_ERRORS)}, not {encoding_errors!r}")


def read_lines(path: Path, encoding_errors: str = "strict") -> Iterator[tuple[int, str]]:
    """``(line number, line)`` for each line of a UTF-8 file (``.gz`` read
    decompressed), each line with its ``\\n``; a leading byte-order mark is dropped.
    Lines end at ``\\n`` only, as in editors and ``wc -l``, so line numbers agree with them.

    ``encoding_errors``: ``"strict"`` raises ``InputError`` at the first byte
    that is not UTF-8; ``"replace"`` reads such bytes as U+FFFD and logs a warning."""
    check_encoding_errors(encoding_errors)
    first_bad: InputError | None = None
    bad_lines = 0
    try:
        for lineno, raw in _raw_lines(path):
            try:
                line = decode_line(raw, path, lineno)
            except InputError as err:
                if encoding_errors == "strict":
                    raise
                first_bad, bad_lines = first_bad or err, bad_lines + 1
                line = raw.decode("utf-8", errors="replace")
            yield lineno, line.removeprefix(_BOM) if lineno == 1 else line
    finally:  # also when the caller stops early (format sniffing, a limit)
        if first_bad is not None:
            logger.warning("%s; replaced with U+FFFD on %d line(s) of this file", first_bad, bad_lines)


def decode_line(raw: bytes, path: Path, lineno: int) -> str:
    """``raw`` decoded as UTF-8, or an ``InputError`` naming the first bad byte
    and its column (1-based, in characters, as an editor counts them)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        column = len(raw[: err.start].decode("utf-8")) + 1  # all before err.start is valid
        message = f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {column})"
        raise InputError(message, path, lineno) from None


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number, bytes)``; a damaged or unreadable file is an ``InputError``
    at the line being read when it failed."""
    lineno = 0
    try:
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):
                yield lineno, raw
    except EOFError:
        raise InputError("the gzip file ends early (truncated or corrupt)", path, lineno + 1) from None
    except (gzip.BadGzipFile, zlib.error) as err:  # BadGzipFile is an OSError: caught first
        raise InputError(f"not a valid gzip file ({err})", path, lineno + 1) from None
    except OSError as err:
        raise InputError(f"cannot read this file ({err.strerror or err})", path) from None


def _open_binary(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_text(path: Path, encoding_errors: str = "strict") -> str:
    """The whole file as text, decoded as ``read_lines`` does."""
    return "".join(line for _, line in read_lines(path, encoding_errors))


def first_nonblank_line(path: Path, encoding_errors: str = "strict") -> str:
    """The first line with something other than whitespace, or ``""``: what
    format detection looks at."""
    for _, line in read_lines(path, encoding_errors):
        if line.strip():
            return line
    return ""


def tagged_records(lines: Iterable[tuple[int, str]], tag: str, path: Path) -> Iterator[tuple[int, str]]:
    """``(line, body)`` for each ``<TAG> body </TAG>`` record (the tag in any
    case), where records may span lines or share one, ``line`` being where the
    record opens. A record left open, a close without an open and text between
    records are errors: each would otherwise lose or merge records silently."""
    marker = re.compile(rf"<(/?){re.escape(tag)}>", re.IGNORECASE)
    body: list[str] | None = None
    start = 0
    for lineno, line in lines:
        end = 0
        for match in marker.finditer(line):
            segment, end = line[end : match.start()], match.end()
            closing = bool(match.group(1))
            if body is None:
                _nothing_outside(segment, tag, path, lineno)
                if closing:
                    raise InputError(f"</{tag}> without an opening <{tag}>", path, lineno)
                body, start = [], lineno
            elif closing:
                yield start, "".join(body + [segment])
                body = None
            else:
                raise InputError(f"<{tag}> is not closed before the next <{tag}> at line {lineno}", path, start)
        if body is None:
            _nothing_outside(line[end:], tag, path, lineno)
        else:
            body.append(line[end:])
    if body is not None:
        raise InputError(f"<{tag}> is not closed before the end of the file", path, start)


def _nothing_outside(text: str, tag: str, path: Path, lineno: int) -> None:
    if text.strip():
        raise InputError(f"text outside a <{tag}> ... </{tag}> record", path, lineno)
