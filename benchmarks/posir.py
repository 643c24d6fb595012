"""Position bias of the packaged embedders on a PosIR benchmark built from HotpotQA.

Builds the position-controlled benchmark from ../shared/data/hotpotqa-distractor.jsonl
(every question with labelled evidence, four document lengths, 20 evidence
positions), runs each encoder through ``ragline eval posir``'s code, prints a
table of nDCG@10 / PSI / slope per length bucket, writes the comparison plot,
and ends with one JSON line of every figure.

    python benchmarks/posir.py [--out docs/img/posir.png] [--encoders all-MiniLM-L6-v2,...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "hotpotqa-distractor.jsonl")
    parser.add_argument("--encoders", default="all-MiniLM-L6-v2,all-MiniLM-L6-v2@512",
                        help="Comma-separated; NAME@N sets the encoder's input limit to N tokens. all-mpnet-base-v2 (make extra-models) takes ~25 min here.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "posir.png")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()

    from ragline.engine.lm.packaged import packaged_model_path
    from ragline.eval.posir import evaluate_posir
    from ragline.eval.posir_build import build_posir
    from ragline.eval.posir_plot import plot_position_bias

    work = Path(tempfile.mkdtemp(prefix="ragline-posir-"))
    start = time.perf_counter()
    counts = build_posir(args.data, work / "posir", limit=args.limit)
    figures: dict = {"build_seconds": round(time.perf_counter() - start, 1), "queries_per_domain": max(counts.values())}
    reports = {}
    for spec in args.encoders.split(","):
        name, _, limit = spec.partition("@")
        if packaged_model_path(name) is None and "/" not in name:
            print(f"skipping {name}: no packaged copy installed")
            continue
        start = time.perf_counter()
        result = evaluate_posir(work / "posir", name, max_seq_length=int(limit) if limit else None)
        label = f"{name} ({result['max_seq_length']} tokens)"
        report = result["report"]["eng-Latn"]
        reports[label] = report
        figures[f"{spec}_seconds"] = round(time.perf_counter() - start, 1)
        for part, stats in report.items():
            for key in ("mean_ndcg10", "binned_ndcg10", "psi", "slope"):
                figures[f"{spec}_{part}_{key}"] = round(stats[key], 4)
            print(f"{label:<40} {part:<8} n={stats['queries']:<4} nDCG@10 {stats['mean_ndcg10']:.4f}  "
                  f"binned {stats['binned_ndcg10']:.4f}  PSI {stats['psi']:.3f}  slope {stats['slope']:+.3f}")
    plot_position_bias(reports, args.out, title="Evidence position vs nDCG@10 (PosIR built from HotpotQA)")
    print(f"plot: {args.out}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
