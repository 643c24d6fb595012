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


def test_every_check_has_a_committed_baseline_for_each_ratio_on_each_cpu():
    check = load_check()
    every_cpu = json.loads((BENCHMARKS / "baselines.json").read_text())
    assert "avx2, 2 cores" in every_cpu
    for baselines in every_cpu.values():
        assert {name: sorted(ratios) for name, (_, ratios) in check.CHECKS.items()} == \
            {name: sorted(baselines[name]) for name in check.CHECKS}


def test_the_cpu_kind_names_the_vector_unit_and_the_cores():
    kind = load_check().cpu_kind()
    assert kind.endswith(" cores") and kind.split(",")[0].split("+")[0] in {"avx2", "avx512", "unknown vector unit"}


def check_on_this_cpu(tmp_path, monkeypatch, baselines: dict):
    """check.py on a CPU of kind "this cpu", with ``baselines`` in a file of its own."""
    check = load_check()
    path = tmp_path / "baselines.json"
    path.write_text(json.dumps(baselines))
    monkeypatch.setattr(check, "BASELINES", path)
    monkeypatch.setattr(check, "cpu_kind", lambda: "this cpu")
    monkeypatch.setattr("sys.argv", ["check.py", "--only", "serve"])
    return check, path


def test_a_regression_is_run_again_and_fails_only_when_it_repeats(tmp_path, monkeypatch, capsys):
    import pytest

    check, _ = check_on_this_cpu(tmp_path, monkeypatch, {"this cpu": {"serve": {"batching_speedup": 2.0}}})

    def runs(*speedups):
        figures = iter([{"batching_speedup": s} for s in speedups])
        monkeypatch.setattr(check, "run", lambda name: (next(figures), [1.0, 1.0]))

    runs(1.0, 1.9)  # slow by chance once
    check.main()
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["regressions"] == [] and report["checks"]["serve"]["second_run"]["ratios"] == {"batching_speedup": 1.9}
    runs(1.0, 1.2)  # slow twice
    with pytest.raises(SystemExit) as exited:
        check.main()
    assert exited.value.code == 1
    assert "batching_speedup 1.2 against a baseline of 2" in capsys.readouterr().err


def test_another_cpus_baselines_are_not_compared_and_update_records_this_ones(tmp_path, monkeypatch, capsys):
    check, baselines = check_on_this_cpu(tmp_path, monkeypatch, {"that cpu": {"serve": {"batching_speedup": 9.0}}})
    monkeypatch.setattr(check, "run", lambda name: ({"batching_speedup": 1.0}, [1.0, 1.0]))
    check.main()  # 1.0 against that CPU's 9.0 is no regression here
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["regressions"] == []
    assert "no baselines for this CPU (this cpu; baselines exist for: that cpu)" in captured.err
    monkeypatch.setattr("sys.argv", ["check.py", "--only", "serve", "--update"])
    check.main()
    assert json.loads(baselines.read_text()) == {"that cpu": {"serve": {"batching_speedup": 9.0}},
                                                 "this cpu": {"serve": {"batching_speedup": 1.0}}}
