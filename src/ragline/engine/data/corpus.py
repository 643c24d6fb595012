"""Corpus readers. Each streams ``Document``s one at a time, so a corpus never
has to fit in memory, and reports malformed records with file and line.

Formats:
- ``beir``: a folder with ``corpus.jsonl`` (``_id``, ``title``, ``text``,
  optional ``metadata``).
- ``jsonl``: one JSON object a line with ``id`` or ``_id``, ``text``, an
  optional ``title`` and an optional ``metadata`` object (the fields filters
  test); a BEIR ``corpus.jsonl`` given on its own reads the same.
- ``trec``: ``<DOC><DOCNO>id</DOCNO> text </DOC>`` files (a file or a folder of
  them); a record may span lines or share one with others.
- ``dir``: a folder of ``.txt`` / ``.md`` files; the id is the relative path.
  A file may open with YAML front matter (between two ``---`` lines): its
  ``title`` is the title, every other key is metadata.
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
        metadata = record.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise InputError(f"'metadata' must be a JSON object, not {json.dumps(metadata)[:40]}", path, lineno)
        yield Document(doc_id, text, title, origin=f"{path}:{lineno}", metadata=metadata or None)


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
            metadata, body = _split_front_matter(read_text(file, encoding_errors), file)
            title = metadata.pop("title", "")
            if not isinstance(title, str):
                raise InputError("the front matter's 'title' must be a string", file, 2)
            if not title:
                title, body = _split_heading(body)
            yield Document(file.relative_to(path).as_posix(), body, title or file.stem, origin=f"{file}:1",
                           metadata=metadata or None)


_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*(\r?\n|\Z)", re.DOTALL | re.MULTILINE)


def _split_front_matter(text: str, file: Path) -> tuple[dict, str]:
    """``(metadata, the rest)`` of a file that opens with YAML front matter."""
    import yaml

    match = _FRONT_MATTER.match(text)
    if match is None:
        return {}, text
    try:
        # BaseLoader: every value a string, as written, except lists and maps;
        # then numbers and booleans are read as JSON reads them, no YAML surprises (no: false).
        metadata = yaml.load(match.group(1), Loader=yaml.BaseLoader)  # noqa: S506 (BaseLoader builds no objects)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = 2 + mark.line if mark is not None else 1
        raise InputError(f"malformed front matter: {getattr(err, 'problem', None) or err}", file, line) from None
    if metadata is None:
        return {}, text[match.end():]
    if not isinstance(metadata, dict):
        raise InputError("front matter must be 'key: value' lines", file, 2)
    return {key: _scalar(value) for key, value in metadata.items()}, text[match.end():]


def _scalar(value):
    """A front matter value: numbers and true/false as JSON would read them, text as text."""
    if isinstance(value, list):
        return [_scalar(v) for v in value]
    if isinstance(value, dict):
        return {k: _scalar(v) for k, v in value.items()}
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return parsed if isinstance(parsed, (int, float, bool)) else value


def _split_heading(text: str) -> tuple[str, str]:
    """A leading Markdown heading becomes the title (and leaves the body)."""
    stripped = text.lstrip()
    if stripped.startswith("#"):
        heading, _, body = stripped.partition("\n")
        return heading.lstrip("#").strip(), body.lstrip("\n")
    return "", text
