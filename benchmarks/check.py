"""``make bench-check``: a short run of each benchmark of a measured path, its
ratios compared with the committed baselines (benchmarks/baselines.json).

Ratios, not times: each is two figures measured side by side in one run (warm
against full prefill, Ray against a plain build, batching on against off), so
a busier or slower machine moves both. A benchmark with a ratio more than
25 % worse than its baseline runs once more (a short run on a shared machine
is sometimes slow by chance; a regression repeats), and a ratio still worse
in both runs fails the check, naming the benchmark, the ratio and the values.
Run it before you stop whenever you touched a measured path; ``--update``
writes the figures of this run as the new baselines (after a change that
moves them on purpose: say so in the commit).

Baselines are kept per kind of CPU (its vector unit and core count): the same
code's warm-cache speed-up was 34.8× on an AVX2 machine and 19× on one with
AVX-512 and AMX, whose matrix units shorten the full prefill it is measured
against. A CPU without baselines of its own is compared with nothing (the
report says so) until ``--update`` records its figures.

The benchmarks run one after another (never two at once), each in its own
process; their progress goes to stderr. The last line is one JSON object:
every ratio, its baseline, and the load average around each run.

    python benchmarks/check.py [--only NAME ...] [--update]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASELINES = HERE / "baselines.json"
TOLERANCE = 0.25

# name: (arguments of the short run, {ratio: (what it is computed from, "higher" or "lower" is better)})
CHECKS: dict[str, tuple[list[str], dict[str, tuple[str, str]]]] = {
    "user_paths": (["user_paths.py", "--quick"], {
        "warm_ttft_speedup": ("quiet.warm_ttft_speedup", "higher"),
        "cold_over_full_ttft": ("quiet.cold_over_full_ttft", "lower"),
        "warm_ask_over_query_wall": ("warm_ask_over_query_wall", "lower"),
        "help_over_query_wall": ("help_wall_s / query_wall_s", "lower"),
    }),
    "kv_reuse": (["kv_reuse.py", "--models", "smollm2-135m-instruct", "--speed-only", "--passages", "20",
                  "--repeats", "2"], {
        "warm_ttft_speedup_in_process": ("smollm2-135m-instruct_speedup_20", "higher"),
    }),
    "serve": (["serve.py", "--docs", "500", "--requests", "300", "--gen-requests", "0"], {
        "batching_speedup": ("batching_speedup", "higher"),
    }),
    "scale": (["scale.py", "--docs", "400", "--small", "64", "--workers", "2", "--repeats", "1"], {
        "ray_over_plain_build": ("p2.ray_seconds / p2.plain_seconds", "lower"),
    }),
}


def figure(figures: dict, path: str) -> float:
    """A figure by its dotted path, or the quotient of two ("a.b / c")."""
    if " / " in path:
        numerator, denominator = path.split(" / ")
        return figure(figures, numerator) / figure(figures, denominator)
    value = figures
    for part in path.split("."):
        value = value[part]
    return float(value)


def cpu_kind() -> str:
    """The key of this machine's baselines, e.g. "avx2, 2 cores"."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((set(line.split(":", 1)[1].split()) for line in cpuinfo if line.startswith("flags")), set())
    except OSError:
        pass
    vector = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "unknown vector unit"
    return f"{vector}{'+amx' if 'amx_tile' in flags else ''}, {os.cpu_count()} cores"


def regressions(measured: dict[str, dict[str, float]], baselines: dict[str, dict[str, float]],
                tolerance: float = TOLERANCE) -> list[str]:
    """One line per ratio more than ``tolerance`` worse than its baseline."""
    found = []
    for name, ratios in measured.items():
        for ratio, value in ratios.items():
            base = baselines.get(name, {}).get(ratio)
            if base is None:
                continue
            better = CHECKS[name][1][ratio][1]
            worse_by = (base / value - 1) if better == "higher" else (value / base - 1)
            if worse_by > tolerance:
                found.append(f"{name}: {ratio} {value:.3g} against a baseline of {base:.3g} "
                             f"({worse_by:.0%} worse; {better} is better)")
    return found


def run(name: str) -> tuple[dict, list[float]]:
    arguments = CHECKS[name][0]
    loads = [os.getloadavg()[0]]
    print(f"== {name}: {' '.join(arguments)}  (load average {loads[0]:.2f})", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, str(HERE / arguments[0]), *arguments[1:]], stdout=subprocess.PIPE, text=True)
    loads.append(os.getloadavg()[0])
    if done.returncode != 0:
        raise SystemExit(f"bench-check: {name} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1]), loads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(CHECKS), default=list(CHECKS))
    parser.add_argument("--update", action="store_true", help="write this run's ratios as the baselines")
    args = parser.parse_args()
    every_cpu = json.loads(BASELINES.read_text()) if BASELINES.exists() else {}
    cpu = cpu_kind()
    baselines = every_cpu.get(cpu, {})
    if not baselines:
        print(f"bench-check: no baselines for this CPU ({cpu}; baselines exist for: {', '.join(every_cpu) or 'none'}): "
              "nothing to compare with; --update records this run's", file=sys.stderr)
    measured: dict[str, dict[str, float]] = {}
    report: dict = {"cpu": cpu, "cpu_cores": os.cpu_count(), "tolerance": TOLERANCE, "checks": {}}
    started = time.perf_counter()
    for name in args.only:
        figures, loads = run(name)
        measured[name] = {ratio: round(figure(figures, path), 3) for ratio, (path, _) in CHECKS[name][1].items()}
        report["checks"][name] = {"ratios": measured[name], "baselines": baselines.get(name, {}),
                                  "load_average_before_after": [round(x, 2) for x in loads]}
        print(f"   {measured[name]}  (baseline {baselines.get(name, {})}, "
              f"{time.perf_counter() - started:.0f} s so far)", file=sys.stderr, flush=True)
    failed = regressions(measured, baselines)
    if failed and not args.update:
        # A short run on a shared machine is sometimes slow by chance; a regression repeats. Each
        # benchmark that regressed runs once more, and each ratio keeps the better of its two runs.
        again = sorted({line.split(":")[0] for line in failed})
        for name in again:
            figures, loads = run(name)
            second = {ratio: round(figure(figures, path), 3) for ratio, (path, _) in CHECKS[name][1].items()}
            report["checks"][name]["second_run"] = {"ratios": second,
                                                    "load_average_before_after": [round(x, 2) for x in loads]}
            measured[name] = {ratio: (max if CHECKS[name][1][ratio][1] == "higher" else min)(value, second[ratio])
                              for ratio, value in measured[name].items()}
            print(f"   again: {second}", file=sys.stderr, flush=True)
        failed = regressions(measured, baselines)
    report["regressions"] = failed
    if args.update:
        BASELINES.write_text(json.dumps({**every_cpu, cpu: {**baselines, **measured}}, indent=2) + "\n")
        print(f"wrote {BASELINES} ({cpu})", file=sys.stderr)
    print(json.dumps(report))
    if failed and not args.update:
        print("bench-check: " + "\n             ".join(failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
