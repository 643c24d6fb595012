"""Writing evaluation results: a TREC run, per-query metrics (JSONL), a
``summary.json`` with everything needed to reproduce the figure, and a table
in the terminal; and reading per-query rows back (to compare runs)."""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ragline.engine.atomic import atomic_directory, atomic_file, atomic_write_text, check_replaceable
from ragline.engine.data.runfile import write_run
from ragline.engine.data.text import read_lines
from ragline.engine.errors import InputError
from ragline.engine.index.layout import IndexDir
from ragline.engine.pipeline import Pipeline

_PACKAGES = ("ragline", "torch", "transformers", "sentence-transformers", "faiss-cpu", "faiss-gpu-cu12",
             "pyserini", "pytrec-eval-terrier", "numpy")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def pipeline_provenance(pipeline: Pipeline) -> dict[str, Any]:
    """The pipeline's configuration and the recorded settings of every index it reads."""
    indexes = {}
    for stage in pipeline.stages:
        path = getattr(stage, "index", None)
        if isinstance(path, str) and path not in indexes:
            try:
                indexes[path] = IndexDir.open(path).meta
            except Exception:  # a stage's own index format: record the path only
                indexes[path] = None
    return {"pipeline": pipeline.to_config(with_defaults=True), "indexes": indexes}


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows ``write_jsonl`` wrote; a line that is not a JSON object (or not
    UTF-8) is an error naming the file and line."""
    rows = []
    for number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            raise InputError("not a JSON object", path, number)
        rows.append(row)
    return rows


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(value, indent=2, default=str) + "\n")


RESULTS_KIND = "results folder"


def check_results_folder(out: Path) -> None:
    """Refuse, before a long evaluation, an ``--out`` it would not replace."""
    check_replaceable(out, RESULTS_KIND, _is_results)


def results_folder(out: Path):
    """A context manager yielding a temporary folder that becomes ``out`` whole
    when the block succeeds: a run's files are never mixed with another's."""
    return atomic_directory(out, RESULTS_KIND, recognise=_is_results)


def _is_results(path: Path) -> bool:
    return (path / "summary.json").is_file()


def write_results(out: Path, run: Mapping[str, list[tuple[str, float]]], per_query: Mapping[str, Mapping[str, float]],
                  summary: Mapping[str, Any], tag: str = "ragline") -> None:
    with results_folder(out) as tmp:
        write_run(tmp / "run.trec", run, tag=tag)
        write_jsonl(tmp / "per_query.jsonl", ({"qid": qid, **values} for qid, values in per_query.items()))
        write_json(tmp / "summary.json", summary)


def print_metrics(console: Console, title: str, means: Mapping[str, float], reference: Mapping[str, float] | None = None) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    if reference:
        table.add_column("reference", justify="right")
        table.add_column("delta", justify="right")
    for metric, value in means.items():
        row = [metric, f"{value:.4f}"]
        if reference:
            ref = reference.get(metric)
            row += ["" if ref is None else f"{ref:.4f}", "" if ref is None else f"{value - ref:+.4f}"]
        table.add_row(*row)
    console.print(table)
