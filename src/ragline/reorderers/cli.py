"""``ragline calibrate attnrank``: measure where the generator looks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer


def calibrate_attnrank_command(
    data: Annotated[Path, typer.Option("--data", help="HotpotQA JSONL: real paragraphs and questions.")],
    out: Annotated[Path, typer.Option("--out", help="Profile file to write (JSON); a PNG plot is written beside it.")],
    model: Annotated[str, typer.Option("--model", help="The generator: hub id, folder, or a packaged model.")] = "SmolLM2-135M-Instruct",
    slots: Annotated[int, typer.Option("--slots", min=1, help="Passages per prompt (N).")] = 10,
    questions: Annotated[int, typer.Option(min=1, help="Calibration prompts (one per question).")] = 50,
    per_token: Annotated[bool, typer.Option("--per-token", help="Divide each slot's attention by its length.")] = False,
    cite: Annotated[bool, typer.Option("--cite/--no-cite", help="The generate stage's citation mode (its prompt).")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the passage order.")] = 0,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, ... (default: cuda when present).")] = None,
) -> None:
    """Measure the generator's attention per passage slot (the AttnRank profile)."""
    from ragline.engine import terminal
    from ragline.engine.data.hotpotqa import read_hotpotqa
    from ragline.engine.lm.causal_lm import load_causal_lm
    from ragline.engine.lm.prompts import PromptBuilder
    from ragline.reorderers.attnrank_calibration import calibrate, plot_profile

    lm, tokenizer = load_causal_lm(model, device=device, dtype="float32")
    chosen = read_hotpotqa(data)[:questions]
    profile = calibrate(lm, tokenizer, model, chosen, slots, PromptBuilder(cite=cite), per_token, seed,
                        progress=sys.stderr.isatty(), data_name=data.name)
    profile.save(out)
    plot_profile(profile, out.with_suffix(".png"))
    shares = " ".join(f"{v:.3f}" for v in profile.profile)
    terminal.stdout().print(f"[green]calibrated[/] {out} ({len(chosen)} prompts, {slots} slots): {shares}")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    groups["calibrate"].command("attnrank")(calibrate_attnrank_command)
