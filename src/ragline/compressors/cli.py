"""``ragline train sentinel``: fit Sentinel's attention probe on HotpotQA."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer


def train_sentinel_command(
    data: Annotated[Path, typer.Option("--data", help="HotpotQA JSONL (supporting facts label the sentences).")],
    out: Annotated[Path, typer.Option("--out", help="File to write the probe to (JSON).")],
    proxy: Annotated[str, typer.Option("--proxy", help="Proxy LM: hub id, folder, or a packaged model.")] = "SmolLM2-135M-Instruct",
    holdout: Annotated[float, typer.Option(help="Fraction of questions held out (split by question id) for the AUC.")] = 0.3,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Train on at most this many questions.")] = None,
    test_limit: Annotated[Optional[int], typer.Option(min=1, help="Report the AUC on at most this many held-out questions.")] = None,
    c: Annotated[Optional[float], typer.Option("--c", help="Inverse L2 regularisation of the logistic regression (default: chosen by cross-validation over training questions).")] = None,
    recipe: Annotated[str, typer.Option(help="best: the compression benchmark's best variant (last+question pooling, attention+embedding, --select, evidence-complete questions); paper: Sentinel's original (last token, attention, every head, --all-questions). The options below change one part of it.")] = "best",
    pooling: Annotated[Optional[str], typer.Option(help="Which tokens read the context: last, question or last+question.")] = None,
    features: Annotated[Optional[str], typer.Option(help="attention, or attention+embedding (the sentence's similarity to the question is one more feature).")] = None,
    select: Annotated[Optional[bool], typer.Option("--select/--all-heads", help="Keep only the best (layer, head) features, how many chosen by cross-validation.")] = None,
    all_questions: Annotated[Optional[bool], typer.Option("--all-questions/--complete-only", help="Learn from questions whose evidence is only partly in their context too.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the question split.")] = 0,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, ... (default: cuda when present).")] = None,
) -> None:
    """Label HotpotQA sentences by supporting facts, read the proxy's attention
    features, fit a logistic-regression probe, report held-out AUC."""
    from ragline.compressors.sentinel_training import recipe_named, train_sentinel
    from ragline.engine import terminal
    from ragline.engine.data.hotpotqa import read_hotpotqa, split_by_question

    chosen = recipe_named(recipe, pooling=pooling, features=features, select=select,
                          complete_only=None if all_questions is None else not all_questions)
    # Limits count the questions that will teach the probe.
    questions = [q for q in read_hotpotqa(data) if q.supporting and (not chosen.complete_only or q.evidence_complete)]
    train, test = split_by_question(questions, holdout, seed) if holdout else (questions, [])
    summary = train_sentinel(train[:limit], test[:test_limit], proxy, out, device=device, c=c, recipe=chosen,
                             progress=sys.stderr.isatty())
    line = (f"[green]trained[/] {out}: {summary['train_questions']} questions, {summary['train_sentences']:,} "
            f"sentences ({summary['train_positives']:,} supporting), train AUC {summary['train_auc']:.3f}")
    if "test_auc" in summary:
        line += (f"; held out: {summary['test_questions']} questions, AUC {summary['test_auc']:.3f} "
                 f"(raw attention {summary['test_auc_raw_attention']:.3f})")
    terminal.stdout().print(line)


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    groups["train"].command("sentinel")(train_sentinel_command)
