"""Query sets (topics) and relevance judgements (qrels).

Topics: TREC ``<top><num>N</num><title>text</title></top>``, BEIR
``queries.jsonl`` (``_id``, ``text``), or ``qid<TAB>text`` lines.
Qrels: TREC ``qid 0 docid rel`` or BEIR ``query-id<TAB>corpus-id<TAB>score``
(with its header line).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from ragline.engine.data.corpus import json_objects, record_id
from ragline.engine.data.text import first_nonblank_line, read_lines, tagged_records
from ragline.engine.errors import InputError

logger = logging.getLogger(__name__)

# "Number:" takes its own spaces: two optional runs of spaces side by side
# make the pattern backtrack quadratically over a long run.
_NUM = re.compile(r"<num>\s*(?:Number:\s*)?([^<\s]+)", re.IGNORECASE)
_TITLE = re.compile(r"<title>\s*(?:Topic:)?(.*?)(?=</title>|<[a-z]+>|$)", re.IGNORECASE | re.DOTALL)

Topic = tuple[str, str, int]  # (qid, text, line)


def read_topics(path: str | Path, encoding_errors: str = "strict") -> list[tuple[str, str]]:
    """``[(qid, text), ...]`` in file order, the format told from the first line.

    A query id given twice with different text is an ``InputError`` at the
    second; given twice with the same text, it is read once (and logged).
    ``encoding_errors``: ``"strict"`` (the default) makes a byte that is not
    UTF-8 an ``InputError`` naming file, line and column; ``"replace"`` reads
    such bytes as U+FFFD and logs a warning."""
    path = Path(path)
    if not path.is_file():
        raise InputError("topics file not found", path=path)
    head = first_nonblank_line(path, encoding_errors).lstrip().lower()
    if head.startswith("<top>"):
        parse = _trec_topics
    elif head.startswith("{"):
        parse = _jsonl_topics
    else:
        parse = _tsv_topics
    topics = _unique(parse(path, encoding_errors), path)
    if not topics:
        raise InputError("no topics found", path=path)
    return topics


def _trec_topics(path: Path, encoding_errors: str) -> Iterator[Topic]:
    for line, body in tagged_records(read_lines(path, encoding_errors), "top", path):
        num, title = _NUM.search(body), _TITLE.search(body)
        if not num:
            raise InputError("<top> without <num>", path, line)
        if not title or not title.group(1).strip():
            raise InputError(f"topic {num.group(1)} has no <title> text", path, line)
        yield num.group(1), " ".join(title.group(1).split()), line


def _jsonl_topics(path: Path, encoding_errors: str) -> Iterator[Topic]:
    for lineno, record in json_objects(path, encoding_errors):
        qid = record_id(record, ("_id", "id"), path, lineno)
        text = record.get("text")
        if not isinstance(text, str):
            raise InputError(f"query {qid}: 'text' must be a string", path, lineno)
        if not text.strip():
            raise InputError(f"query {qid} has empty text", path, lineno)
        yield qid, text, lineno


def _tsv_topics(path: Path, encoding_errors: str) -> Iterator[Topic]:
    for lineno, line in read_lines(path, encoding_errors):
        if not line.strip():
            continue
        qid, tab, text = line.partition("\t")
        if not tab or not qid.strip() or not text.strip():
            raise InputError("expected 'qid<TAB>query text'", path, lineno)
        yield qid.strip(), text.strip(), lineno


def _unique(topics: Iterable[Topic], path: Path) -> list[tuple[str, str]]:
    """Each query id once: a later evaluation keys queries by id, so a second
    query under the same id would silently replace the first."""
    seen: dict[str, Topic] = {}
    unique = []
    for qid, text, line in topics:
        if qid not in seen:
            seen[qid] = (qid, text, line)
            unique.append((qid, text))
            continue
        _, first_text, first_line = seen[qid]
        if text != first_text:
            raise InputError(f"query id {qid!r} is already used, with other text, at line {first_line}", path, line)
        logger.warning("%s:%d: query id %r repeats line %d with the same text; read once", path, line, qid, first_line)
    return unique


def read_qrels(path: str | Path, encoding_errors: str = "strict") -> dict[str, dict[str, int]]:
    """``{qid: {docid: relevance}}``. Relevance is an integer ("2.0" reads as 2);
    anything else ("0.7", "inf") is an ``InputError`` rather than a guess.
    ``encoding_errors``: ``"strict"`` (the default) or ``"replace"``, as for
    ``read_topics``."""
    path = Path(path)
    if not path.is_file():
        raise InputError("qrels file not found", path=path)
    qrels: dict[str, dict[str, int]] = {}
    for lineno, line in read_lines(path, encoding_errors):
        fields = line.split()
        if not fields:
            continue
        if lineno == 1 and fields[0].lower() in ("query-id", "qid", "query_id"):
            continue  # BEIR header
        if len(fields) == 4:
            qid, _, docid, rel = fields
        elif len(fields) == 3:
            qid, docid, rel = fields
        else:
            raise InputError("expected 'qid 0 docid rel' or 'qid<TAB>docid<TAB>rel'", path, lineno)
        qrels.setdefault(qid, {})[docid] = _relevance(rel, path, lineno)
    if not qrels:
        raise InputError("no judgements found", path=path)
    return qrels


def _relevance(text: str, path: Path, lineno: int) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value.is_integer():  # also false for inf and nan
        raise InputError(f"relevance {text!r} is not an integer", path, lineno)
    return int(value)
