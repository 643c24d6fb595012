"""make bench-check's comparison (benchmarks/check.py): ratios, not times,
against committed baselines, each in its own direction."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_check():
    spec = importlib.util.spec_from_file_location("bench_check", BENCHMARKS / "check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_ratio_more_than_a_quarter_worse_fails_in_its_own_direction():
    check = load_check()
    baselines = {"user_paths": {"warm_ttft_speedup": 30.0, "warm_ask_over_query_wall": 4.0}}
    assert check.regressions({"user_paths": {"warm_ttft_speedup": 25.0, "warm_ask_over_query_wall": 4.9}}, baselines) == []
    failed = check.regressions({"user_paths": {"warm_ttft_speedup": 23.0, "warm_ask_over_query_wall": 5.2}}, baselines)
    assert len(failed) == 2
    assert failed[0].startswith("user_paths: warm_ttft_speedup 23 against a baseline of 30 (30% worse")
    assert "warm_ask_over_query_wall 5.2 against a baseline of 4 (30% worse; lower is better)" in failed[1]
    # Better than the baseline is never a regression, nor a ratio without one.
    assert check.regressions({"user_paths": {"warm_ttft_speedup": 90.0}}, baselines) == []
    assert check.regressions({"serve": {"batching_speedup": 0.1}}, baselines) == []


def test_figures_are_read_by_path_or_as_a_quotient():
    check = load_check()
    figures = {"p2": {"ray_seconds": 30.0, "plain_seconds": 20.0}, "help_wall_s": 0.5, "query_wall_s": 2.0}
    assert check.figure(figures, "p2.ray_seconds / p2.plain_seconds") == 1.5
    assert check.figure(figures, "help_wall_s / query_wall_s") == 0.25


def test_every_check_has_a_committed_baseline_for_each_ratio():
    check = load_check()
    baselines = json.loads((BENCHMARKS / "baselines.json").read_text())
    assert {name: sorted(ratios) for name, (_, ratios) in check.CHECKS.items()} == \
        {name: sorted(baselines[name]) for name in check.CHECKS}
