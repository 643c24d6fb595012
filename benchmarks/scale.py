"""Building an index on Ray against the plain single-process build, at the
same parallelism (dense all-MiniLM-L6-v2, flat FAISS, a Vaswani slice).

For p = 1 and 2: the plain build with torch on p threads, and the Ray build
with its encoding on a pool of p actors (one CPU slot and one thread each) on
a local Ray of p CPUs. Each build runs in a fresh process and is timed from
``build_index``'s call to its return: reading, encoding (the model load
included: in the plain build once, on Ray once per actor plus the driver's),
the document store, FAISS, the rename. Ray's own start (``ray.init``) is timed
apart: a cluster is up before the jobs it runs.

The fixed cost of a build (imports, model loads, actor start-up) is measured
on a small slice, so that the overhead is given twice: end to end on the big
slice, and in the steady state (both builds less their fixed cost). BM25 is
left out: it is built on the driver in both, the same way.

Every build runs ``--repeats`` times, plain and Ray interleaved, and the
fastest of each counts: on a shared machine the others' load comes and goes,
and the minimum is the figure least disturbed by it. Read the timings as
contended all the same.

Progress and an ETA go to stderr; the last line is one JSON object with every
figure.

    python benchmarks/scale.py [--docs 2000] [--small 64] [--workers 1 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "vaswani"
# Ray's processes on the loopback; Ray's crash handler off (it fights the JVM's; see engine/scale/ray_session.py).
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "1"}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"


def write_slice(data: Path, docs: int, path: Path) -> Path:
    from ragline.engine.data.corpus import read_corpus

    with open(path, "w", encoding="utf-8") as f:
        for doc in itertools.islice(read_corpus(data / "doc-text.trec"), docs):
            f.write(json.dumps({"id": doc.id, "text": doc.text}) + "\n")
    return path


def child(run: dict) -> dict:
    """One timed build in this (fresh) process."""
    import logging

    import faiss  # noqa: F401  (imports are the process's cost, not the build's)
    import sentence_transformers  # noqa: F401
    import torch

    from ragline.engine.index.build import build_index

    figures: dict = {}
    if run["ray"]:
        import ray

        started = time.perf_counter()
        ray.init(address="local", num_cpus=run["workers"], include_dashboard=False, logging_level=logging.WARNING)
        figures["ray_init_s"] = time.perf_counter() - started
    else:
        torch.set_num_threads(run["workers"])
    started = time.perf_counter()
    meta = build_index(run["corpus"], run["out"], {"dense": {}}, ray="auto" if run["ray"] else None,
                       workers=run["workers"] if run["ray"] else None, progress=sys.stderr.isatty())
    figures.update(seconds=time.perf_counter() - started, passages=meta["passages"])
    return figures


def launch(run: dict) -> dict:
    env = {**os.environ, **(RAY_ENV if run["ray"] else {})}
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(run)], stdout=subprocess.PIPE, env=env,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"the run {run} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--docs", type=int, default=2000, help="Documents in the big slice (the first N of Vaswani).")
    parser.add_argument("--small", type=int, default=64, help="Documents in the small slice (the fixed cost).")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="Runs of every build; the fastest counts.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return

    work = Path(tempfile.mkdtemp(prefix="ragline-scale-"))
    corpora = {size: write_slice(args.data, size, work / f"vaswani-{size}.jsonl") for size in (args.small, args.docs)}
    runs = [{"ray": on_ray, "workers": p, "docs": size, "corpus": str(corpora[size]),
             "out": str(work / f"idx-{'ray' if on_ray else 'plain'}-{p}-{size}-{repeat}")}
            for repeat in range(args.repeats) for size in (args.small, args.docs) for p in args.workers
            for on_ray in (False, True)]
    results: dict[tuple, dict] = {}
    took: list[float] = []  # wall time of each finished run, process start included
    started = time.perf_counter()
    for number, run in enumerate(runs, 1):
        kind = f"Ray, {run['workers']} actor(s)" if run["ray"] else f"plain, {run['workers']} thread(s)"
        say(f"[{number}/{len(runs)}] {kind} on {run['docs']:,} documents  "
            f"(elapsed {clock(time.perf_counter() - started)}, ETA {eta(took, len(runs) // args.repeats, len(runs))})")
        began = time.perf_counter()
        load = os.getloadavg()[0]
        figures = launch(run) | {"load_average": load}
        took.append(time.perf_counter() - began)
        key = (run["ray"], run["workers"], run["docs"])
        if key not in results or figures["seconds"] < results[key]["seconds"]:
            results[key] = figures
        say(f"    {figures['seconds']:.1f} s  (load average {load:.2f} as it started)")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary(args, results)))


def eta(took: list[float], per_repeat: int, total: int) -> str:
    """The runs left: during the first repeat at its average pace so far, later
    each as long as its twin in the first repeat."""
    done = len(took)
    if not done:
        return "–"
    if done >= per_repeat:
        return clock(sum(took[i % per_repeat] for i in range(done, total)))
    return clock(sum(took) / done * (total - done))


def summary(args, results: dict) -> dict:
    figures: dict = {"corpus": f"first {args.docs} Vaswani documents (JSONL, one passage each)",
                     "small_corpus_docs": args.small, "components": "dense all-MiniLM-L6-v2, flat", "repeats": args.repeats,
                     "cpu_cores": os.cpu_count(), "note": "shared machine: timings are contended"}
    for p in args.workers:
        plain, ray = results[(False, p, args.docs)], results[(True, p, args.docs)]
        plain_fixed, ray_fixed = results[(False, p, args.small)]["seconds"], results[(True, p, args.small)]["seconds"]
        figures[f"p{p}"] = {
            "plain_seconds": round(plain["seconds"], 2),
            "ray_seconds": round(ray["seconds"], 2),
            "plain_docs_per_s": round(args.docs / plain["seconds"], 1),
            "ray_docs_per_s": round(args.docs / ray["seconds"], 1),
            "ray_overhead_end_to_end": round(ray["seconds"] / plain["seconds"] - 1, 3),
            "plain_fixed_seconds": round(plain_fixed, 2),
            "ray_fixed_seconds": round(ray_fixed, 2),
            "ray_overhead_steady_state": round((ray["seconds"] - ray_fixed) / (plain["seconds"] - plain_fixed) - 1, 3),
            "ray_steady_docs_per_s_per_worker": round((args.docs - args.small) / (ray["seconds"] - ray_fixed) / p, 1),
            "ray_init_seconds": round(ray["ray_init_s"], 2),
            "load_average_at_start": {"plain": plain["load_average"], "ray": ray["load_average"],
                                      "plain_fixed": results[(False, p, args.small)]["load_average"],
                                      "ray_fixed": results[(True, p, args.small)]["load_average"]},
        }
    return figures


if __name__ == "__main__":
    main()
