"""TREC run files: ``qid Q0 docid rank score tag``, one line per retrieved item."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ragline.engine.atomic import atomic_file
from ragline.engine.data.text import read_lines
from ragline.engine.errors import InputError

Run = dict[str, dict[str, float]]  # qid -> docid -> score, the pytrec_eval shape


def write_run(path: str | Path, ranked: Mapping[str, Sequence[tuple[str, float]]], tag: str = "ragline") -> None:
    """``ranked`` maps a query id to its ``(docid, score)`` list, best first."""
    with atomic_file(path) as f:
        for qid, items in ranked.items():
            for rank, (docid, score) in enumerate(items, 1):
                f.write(f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n")


def read_run(path: str | Path, encoding_errors: str = "strict") -> Run:
    """The run at ``path``. ``encoding_errors``: ``"strict"`` (the default)
    makes a byte that is not UTF-8 an ``InputError`` naming file, line and
    column; ``"replace"`` reads such bytes as U+FFFD and logs a warning."""
    path = Path(path)
    if not path.is_file():
        raise InputError("run file not found", path=path)
    run: Run = {}
    for lineno, line in read_lines(path, encoding_errors):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise InputError("expected 'qid Q0 docid rank score tag'", path, lineno)
        qid, _, docid, _, score, _ = fields
        try:
            run.setdefault(qid, {})[docid] = float(score)
        except ValueError:
            raise InputError(f"score {score!r} is not a number", path, lineno) from None
    return run
