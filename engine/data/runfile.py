"""TREC run files: ``qid Q0 docid rank score tag``, one line per retrieved item."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ragline.engine.atomic import atomic_file
from ragline.engine.errors import InputError

Run = dict[str, dict[str, float]]  # qid -> docid -> score, the pytrec_eval shape


def write_run(path: str | Path, ranked: Mapping[str, Sequence[tuple[str, float]]], tag: str = "ragline") -> None:
    """``ranked`` maps a query id to its ``(docid, score)`` list, best first."""
    with atomic_file(path) as f:
        for qid, items in ranked.items():
            for rank, (docid, score) in enumerate(items, 1):
                f.write(f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n")


def read_run(path: str | Path) -> Run:
    run: Run = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
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
