"""Corpus readers. Each streams ``Document``s one at a time, so a corpus never
has to fit in memory, and reports malformed records with file and line.

Formats:
- ``beir``: a folder with ``corpus.jsonl`` (``_id``, ``title``, ``text``).
- ``jsonl``: one JSON object a line with ``id`` or ``_id``, ``text`` and an
  optional ``title``; a BEIR ``corpus.jsonl`` given on its own reads the same.
- ``trec``: ``<DOC><DOCNO>id</DOCNO> text </DOC>`` files (a file or a folder of
  them); a record may span lines or share one with others.
- ``dir``: a folder of ``.txt`` / ``.md`` files; the id is the relative path.
Files ending in ``.gz`` are read decompressed. Text must be UTF-8: an invalid
byte is an error naming file, line and column, unless ``encoding_errors="replace"``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from ragline.engine.data.text import (
    check_encoding_errors,
    first_nonblank_line,
    read_lines,
    read_text,
    tagged_records,
)
from ragline.engine.errors import InputError
from ragline.engine.types import Document

FORMATS = ("auto", "beir", "jsonl", "trec", "dir")
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")


def read_corpus(path: str | Path, fmt: str = "auto", encoding_errors: str = "strict") -> Iterator[Document]:
    """The documents of the corpus at ``path``, one at a time.

    ``encoding_errors``: ``"strict"`` (the default) makes a byte that is not
    UTF-8 an ``InputError`` naming file, line and column; ``"replace"`` reads
    such bytes as U+FFFD and logs a warning per file."""
    path = Path(path)
    if not path.exists():
        raise InputError("corpus not found", path=path)
    check_encoding_errors(encoding_errors)
    if fmt == "auto":
        fmt = detect_format(path, encoding_errors)
    readers = {"beir": _read_beir, "jsonl": read_jsonl, "trec": read_trec, "dir": read_text_dir}
    if fmt not in readers:
        raise InputError(f"unknown corpus format {fmt!r}; use one of {', '.join(FORMATS)}", path=path)
    return readers[fmt](path, encoding_errors)


def detect_format(path: Path, encoding_errors: str = "strict") -> str:
    """The corpus format of ``path``, from its layout, name or first line.
    A byte that is not UTF-8 in the line looked at is an ``InputError`` (with
    ``encoding_errors="strict"``), not an unknown format."""
    if path.is_dir():
        if (path / "corpus.jsonl").exists() or (path / "corpus.jsonl.gz").exists():
            return "beir"
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if any(p.suffix.lower() in TEXT_SUFFIXES for p in files):
            return "dir"
        if files and _looks_like_trec(files[0], encoding_errors):
            return "trec"
        raise InputError("cannot tell the corpus format of this folder; pass --format", path=path)
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    if _looks_like_trec(path, encoding_errors):
        return "trec"
    raise InputError("cannot tell the corpus format of this file; pass --format", path=path)


def _looks_like_trec(path: Path, encoding_errors: str) -> bool:
    return first_nonblank_line(path, encoding_errors).lstrip().upper().startswith("<DOC>")


def _read_beir(path: Path, encoding_errors: str = "strict") -> Iterator[Document]:
    corpus = path / "corpus.jsonl"
    if not corpus.exists():
        corpus = path / "corpus.jsonl.gz"
    if not corpus.exists():
        raise InputError("a BEIR folder needs corpus.jsonl", path=path)
    return read_jsonl(corpus, encoding_errors)


# A JSON string escape for half of a UTF-16 surrogate pair: json.loads accepts
# one left unpaired, which is no character at all and fails later, on writing.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def json_objects(path: Path, encoding_errors: str = "strict") -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSONL file."""
    for lineno, line in read_lines(path, encoding_errors):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"malformed JSON: {err.msg} (column {err.colno})", path, lineno) from None
        except ValueError:  # not a JSONDecodeError: an integer longer than int() converts (4300 digits)
            raise InputError("malformed JSON: a number with too many digits", path, lineno) from None
        except RecursionError:
            raise InputError("malformed JSON: nested too deeply", path, lineno) from None
        if not isinstance(record, dict):
            raise InputError("expected a JSON object", path, lineno)
        if _SURROGATE_ESCAPE.search(line) and _has_lone_surrogate(record):
            raise InputError("malformed JSON: a \\u escape of half a surrogate pair is no character", path, lineno)
        yield lineno, record


def _has_lone_surrogate(value: object) -> bool:
    stack = [value]  # a stack, not recursion: the object may be nested as deep as json allows
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def record_id(record: dict, keys: tuple[str, ...], path: Path, lineno: int) -> str:
    """The record's id under the first of ``keys`` it has: a non-blank string
    or an integer (not ``null``, a list, ... which ``str`` would turn into an id)."""
    value = next((record[key] for key in keys if key in record), None)
    names = " or ".join(repr(key) for key in keys)
    if value is None or value == "":
        raise InputError(f"record has no {names}", path, lineno)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise InputError(f"{names} must be a non-blank string or an integer, not {json.dumps(value)[:40]}", path, lineno)
    return str(value)


def read_jsonl(path: Path, encoding_errors: str = "strict") -> Iterator[Document]:
    for lineno, record in json_objects(path, encoding_errors):
        doc_id = record_id(record, ("_id", "id"), path, lineno)
        text = record.get("text", record.get("contents"))
        title = record.get("title") or ""
        if not isinstance(text, str):
            raise InputError("record has no string 'text'", path, lineno)
        if not isinstance(title, str):
            raise InputError("'title' must be a string", path, lineno)
        yield Document(doc_id, text, title, origin=f"{path}:{lineno}")


def read_trec(path: Path, encoding_errors: str = "strict") -> Iterator[Document]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")) if path.is_dir() else [path]
    for file in files:
        for line, body in tagged_records(read_lines(file, encoding_errors), "DOC", file):
            yield _trec_document(body, file, line)


_DOCNO = re.compile(r"<(DOCNO)>", re.IGNORECASE)
_TITLE = re.compile(r"<(TITLE|HEAD|HEADLINE)>", re.IGNORECASE)
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9_]*(\s[^<>]*)?>")  # [^<>]: an unclosed tag stops at the next '<'


def _trec_document(body: str, path: Path, line: int) -> Document:
    docno = _element(body, _DOCNO)
    if docno is None or not docno[0].strip():
        raise InputError("<DOC> record has no <DOCNO>", path, line)
    doc_id, start, end = docno
    body = body[:start] + body[end:]
    title = ""
    heading = _element(body, _TITLE)
    if heading is not None:
        title = " ".join(_TAG.sub(" ", heading[0]).split())
        body = body[: heading[1]] + body[heading[2] :]
    text = " ".join(_TAG.sub(" ", body).split())
    return Document(doc_id.strip(), text, title, origin=f"{path}:{line}")


def _element(body: str, opening: re.Pattern) -> tuple[str, int, int] | None:
    """``(content, start, end)`` of the first element that ``opening`` (whose
    group 1 is the tag name) starts and a matching close tag ends. Two plain
    searches: one lazy pattern for both tags takes quadratic time on an
    unclosed tag followed by long runs of spaces."""
    start = opening.search(body)
    if start is None:
        return None
    close = re.compile(rf"</{start.group(1)}>", re.IGNORECASE).search(body, start.end())
    if close is None:
        return None
    return body[start.end() : close.start()], start.start(), close.end()


def read_text_dir(path: Path, encoding_errors: str = "strict") -> Iterator[Document]:
    if not path.is_dir():
        raise InputError("the 'dir' format needs a folder", path=path)
    for file in sorted(path.rglob("*")):
        if file.is_file() and file.suffix.lower() in TEXT_SUFFIXES and not file.name.startswith("."):
            title, body = _split_heading(read_text(file, encoding_errors))
            yield Document(file.relative_to(path).as_posix(), body, title or file.stem, origin=f"{file}:1")


def _split_heading(text: str) -> tuple[str, str]:
    """A leading Markdown heading becomes the title (and leaves the body)."""
    stripped = text.lstrip()
    if stripped.startswith("#"):
        heading, _, body = stripped.partition("\n")
        return heading.lstrip("#").strip(), body.lstrip("\n")
    return "", text
