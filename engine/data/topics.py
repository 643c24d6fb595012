"""Query sets (topics) and relevance judgements (qrels).

Topics: TREC ``<top><num>N</num><title>text</title></top>``, BEIR
``queries.jsonl`` (``_id``, ``text``), or ``qid<TAB>text`` lines.
Qrels: TREC ``qid 0 docid rel`` or BEIR ``query-id<TAB>corpus-id<TAB>score``
(with its header line).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ragline.engine.data.corpus import open_text
from ragline.engine.errors import InputError

_TOP = re.compile(r"<top>(.*?)</top>", re.IGNORECASE | re.DOTALL)
_NUM = re.compile(r"<num>\s*(?:Number:)?\s*([^<\s]+)", re.IGNORECASE)
_TITLE = re.compile(r"<title>\s*(?:Topic:)?(.*?)(?=</title>|<[a-z]+>|$)", re.IGNORECASE | re.DOTALL)


def read_topics(path: str | Path) -> list[tuple[str, str]]:
    """``[(qid, text), ...]`` in file order."""
    path = Path(path)
    if not path.is_file():
        raise InputError("topics file not found", path=path)
    with open_text(path) as f:
        content = f.read()
    head = content.lstrip()[:200].lower()
    if head.startswith("<top>"):
        topics = _trec_topics(content, path)
    elif head.startswith("{"):
        topics = _jsonl_topics(content, path)
    else:
        topics = _tsv_topics(content, path)
    if not topics:
        raise InputError("no topics found", path=path)
    return topics


def _line_of(content: str, offset: int) -> int:
    return content.count("\n", 0, offset) + 1


def _trec_topics(content: str, path: Path) -> list[tuple[str, str]]:
    topics = []
    for match in _TOP.finditer(content):
        body = match.group(1)
        num, title = _NUM.search(body), _TITLE.search(body)
        line = _line_of(content, match.start())
        if not num:
            raise InputError("<top> without <num>", path, line)
        if not title or not title.group(1).strip():
            raise InputError(f"topic {num.group(1)} has no <title> text", path, line)
        topics.append((num.group(1), " ".join(title.group(1).split())))
    return topics


def _jsonl_topics(content: str, path: Path) -> list[tuple[str, str]]:
    topics = []
    for lineno, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            qid, text = str(record.get("_id", record.get("id"))), record["text"]
        except (json.JSONDecodeError, KeyError, AttributeError):
            raise InputError("expected a JSON object with '_id' and 'text'", path, lineno) from None
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"query {qid} has empty text", path, lineno)
        topics.append((qid, text))
    return topics


def _tsv_topics(content: str, path: Path) -> list[tuple[str, str]]:
    topics = []
    for lineno, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        qid, tab, text = line.partition("\t")
        if not tab or not text.strip():
            raise InputError("expected 'qid<TAB>query text'", path, lineno)
        topics.append((qid.strip(), text.strip()))
    return topics


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """``{qid: {docid: relevance}}``."""
    path = Path(path)
    if not path.is_file():
        raise InputError("qrels file not found", path=path)
    qrels: dict[str, dict[str, int]] = {}
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
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
            try:
                qrels.setdefault(qid, {})[docid] = int(float(rel))
            except ValueError:
                raise InputError(f"relevance {rel!r} is not a number", path, lineno) from None
    if not qrels:
        raise InputError("no judgements found", path=path)
    return qrels
