"""The progress of a build on a terminal: documents done of about how many,
documents per second and the time left.

The total comes from a cheap count over the corpus's raw bytes (lines of a
JSONL file, ``<DOC>`` tags of TREC files, files of a folder), at hundreds of
MB/s: parsing the corpus twice would cost more than a BM25 build. It is an
estimate (blank lines count, say), which a progress bar can live with.
"""

from __future__ import annotations

import contextlib
import gzip
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ragline.engine import terminal
from ragline.engine.data.corpus import TEXT_SUFFIXES

_CHUNK = 1 << 20
_TREC_DOC = re.compile(rb"<doc>", re.IGNORECASE)


def estimate_documents(corpus: Path, fmt: str) -> int | None:
    """About how many documents ``corpus`` holds, or None where it cannot tell."""
    try:
        if fmt == "beir":
            name = "corpus.jsonl" if (corpus / "corpus.jsonl").exists() else "corpus.jsonl.gz"
            return _count_lines(corpus / name)
        if fmt == "jsonl":
            return _count_lines(corpus)
        if fmt == "trec":
            return sum(_count_pattern(file, _TREC_DOC) for file in _files(corpus))
        if fmt == "dir":
            return sum(1 for file in _files(corpus) if file.suffix.lower() in TEXT_SUFFIXES)
    except OSError:
        return None
    return None


@contextlib.contextmanager
def documents_progress(enabled: bool, verb: str, total: int | None, done: int = 0) -> Iterator[Callable[[int], None]]:
    """A bar on stderr while the block runs (gone after it), starting at
    ``done`` of ``total`` documents; yields ``update(documents_done)``."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn(f"{verb} {{task.completed:,}}/{{task.fields[about]}}"), BarColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"))
    start, started = done, time.monotonic()
    with Progress(*columns, console=terminal.stderr(), disable=not enabled, transient=True) as bar:
        task = bar.add_task(verb, total=total, completed=done, rate="– documents/s", eta="–",
                            about=f"~{total:,}" if total is not None else "?")

        def update(documents: int) -> None:
            rate = (documents - start) / max(time.monotonic() - started, 1e-9)
            left = max((total or 0) - documents, 0)
            eta = _clock(left / rate) if rate > 0 and total is not None else "–"
            bar.update(task, completed=documents, rate=f"{rate:,.0f} documents/s", eta=eta)

        yield update


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def _files(corpus: Path) -> list[Path]:
    """The files a reader takes: the corpus itself, or those under its folder (hidden ones left out)."""
    if not corpus.is_dir():
        return [corpus]
    return [p for p in sorted(corpus.rglob("*")) if p.is_file() and not p.name.startswith(".")]


def _chunks(path: Path) -> Iterator[bytes]:
    with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _count_lines(path: Path) -> int:
    lines, last = 0, b"\n"
    for chunk in _chunks(path):
        lines += chunk.count(b"\n")
        last = chunk[-1:]
    return lines + (last != b"\n")  # a last line without its newline


def _count_pattern(path: Path, pattern: re.Pattern) -> int:
    count, tail = 0, b""
    for chunk in _chunks(path):
        # A match may straddle two chunks: carry the end of the previous one,
        # too short to hold a whole match itself.
        data = tail + chunk
        count += sum(1 for _ in pattern.finditer(data))
        tail = data[-4:]
    return count
