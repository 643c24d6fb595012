"""Corpus readers. Each streams ``Document``s one at a time, so a corpus never
has to fit in memory, and reports malformed records with file and line.

Formats:
- ``beir``: a folder with ``corpus.jsonl`` (``_id``, ``title``, ``text``).
- ``jsonl``: one JSON object a line with ``id`` or ``_id``, ``text`` and an
  optional ``title``; a BEIR ``corpus.jsonl`` given on its own reads the same.
- ``trec``: ``<DOC><DOCNO>id</DOCNO> text </DOC>`` files (a file or a folder of them).
- ``dir``: a folder of ``.txt`` / ``.md`` files; the id is the relative path.
Files ending in ``.gz`` are read decompressed.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

from ragline.engine.errors import InputError
from ragline.engine.types import Document

FORMATS = ("auto", "beir", "jsonl", "trec", "dir")
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")


def read_corpus(path: str | Path, fmt: str = "auto") -> Iterator[Document]:
    path = Path(path)
    if not path.exists():
        raise InputError("corpus not found", path=path)
    if fmt == "auto":
        fmt = detect_format(path)
    readers = {"beir": _read_beir, "jsonl": read_jsonl, "trec": read_trec, "dir": read_text_dir}
    if fmt not in readers:
        raise InputError(f"unknown corpus format {fmt!r}; use one of {', '.join(FORMATS)}", path=path)
    return readers[fmt](path)


def open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "corpus.jsonl").exists() or (path / "corpus.jsonl.gz").exists():
            return "beir"
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if any(p.suffix.lower() in TEXT_SUFFIXES for p in files):
            return "dir"
        if files and _looks_like_trec(files[0]):
            return "trec"
        raise InputError("cannot tell the corpus format of this folder; pass --format", path=path)
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    if _looks_like_trec(path):
        return "trec"
    raise InputError("cannot tell the corpus format of this file; pass --format", path=path)


def _looks_like_trec(path: Path) -> bool:
    try:
        with open_text(path) as f:
            for line in f:
                if line.strip():
                    return line.lstrip().upper().startswith("<DOC>")
    except (UnicodeDecodeError, OSError, EOFError):
        return False
    return False


def _read_beir(path: Path) -> Iterator[Document]:
    corpus = path / "corpus.jsonl"
    if not corpus.exists():
        corpus = path / "corpus.jsonl.gz"
    if not corpus.exists():
        raise InputError("a BEIR folder needs corpus.jsonl", path=path)
    return read_jsonl(corpus)


def json_objects(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSONL file."""
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"malformed JSON: {err.msg} (column {err.colno})", path, lineno) from None
            if not isinstance(record, dict):
                raise InputError("expected a JSON object", path, lineno)
            yield lineno, record


def read_jsonl(path: Path) -> Iterator[Document]:
    for lineno, record in json_objects(path):
        doc_id = record.get("_id", record.get("id"))
        text = record.get("text", record.get("contents"))
        title = record.get("title") or ""
        if doc_id is None or doc_id == "":
            raise InputError("record has no 'id' or '_id'", path, lineno)
        if not isinstance(text, str):
            raise InputError("record has no string 'text'", path, lineno)
        if not isinstance(title, str):
            raise InputError("'title' must be a string", path, lineno)
        yield Document(str(doc_id), text, title, origin=f"{path}:{lineno}")


_DOCNO = re.compile(r"<DOCNO>\s*(.*?)\s*</DOCNO>", re.IGNORECASE | re.DOTALL)
_TITLE = re.compile(r"<(TITLE|HEAD|HEADLINE)>(.*?)</\1>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9_]*(\s[^>]*)?>")


def read_trec(path: Path) -> Iterator[Document]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")) if path.is_dir() else [path]
    for file in files:
        yield from _read_trec_file(file)


def _read_trec_file(path: Path) -> Iterator[Document]:
    lines: list[str] | None = None
    start = 0
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            marker = line.strip().upper()
            if marker.startswith("<DOC>"):
                if lines is not None:
                    raise InputError(f"<DOC> opened at line {start} is not closed before this one", path, lineno)
                lines, start = [line.strip()[5:]], lineno
            elif marker.startswith("</DOC>"):
                if lines is None:
                    raise InputError("</DOC> without an opening <DOC>", path, lineno)
                yield _trec_document("\n".join(lines), path, start)
                lines = None
            elif lines is not None:
                lines.append(line.rstrip("\n"))
            elif marker:
                raise InputError("text outside a <DOC> ... </DOC> record", path, lineno)
    if lines is not None:
        raise InputError("<DOC> is not closed before the end of the file", path, start)


def _trec_document(body: str, path: Path, line: int) -> Document:
    match = _DOCNO.search(body)
    if not match or not match.group(1):
        raise InputError("<DOC> record has no <DOCNO>", path, line)
    doc_id = match.group(1)
    body = body[: match.start()] + body[match.end() :]
    title = ""
    title_match = _TITLE.search(body)
    if title_match:
        title = " ".join(_TAG.sub(" ", title_match.group(2)).split())
        body = body[: title_match.start()] + body[title_match.end() :]
    text = " ".join(_TAG.sub(" ", body).split())
    return Document(doc_id, text, title, origin=f"{path}:{line}")


def read_text_dir(path: Path) -> Iterator[Document]:
    if not path.is_dir():
        raise InputError("the 'dir' format needs a folder", path=path)
    for file in sorted(path.rglob("*")):
        if file.is_file() and file.suffix.lower() in TEXT_SUFFIXES and not file.name.startswith("."):
            try:
                text = file.read_text(encoding="utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"not UTF-8 text ({err.reason})", path=file) from None
            title, body = _split_heading(text)
            yield Document(file.relative_to(path).as_posix(), body, title or file.stem, origin=f"{file}:1")


def _split_heading(text: str) -> tuple[str, str]:
    """A leading Markdown heading becomes the title (and leaves the body)."""
    stripped = text.lstrip()
    if stripped.startswith("#"):
        heading, _, body = stripped.partition("\n")
        return heading.lstrip("#").strip(), body.lstrip("\n")
    return "", text
