"""The headline pipeline against plain RAG, on held-out HotpotQA questions.

Open setting: one index (BM25 + dense MiniLM) over every paragraph of
../shared/data/hotpotqa-distractor.jsonl. The question split is the shared
one (by question id, 30% held out, seed 0); everything trained or measured
for a stage comes from the training side:

- the cross-encoder (``ragline train cross-encoder`` as benchmarks/rerank.py
  trains it — gold vs distractor paragraphs plus BM25 hard negatives — but
  one epoch by default, to fit a session on two cores);
- Sentinel's probe (``ragline train sentinel``);
- the AttnRank profile for five passages (``ragline calibrate attnrank``).

Pipelines, each answering the same held-out questions (every evidence-complete
one: 41) with the generator ``--model`` (default SmolLM2-135M-Instruct; greedy,
32 tokens). Sentinel's proxy is ``--proxy`` (default SmolLM2: a small proxy
serves any generator, and training a probe on a 1.5B model's attention would
take hours here); AttnRank is calibrated on the generator itself:

- P0 plain RAG: hybrid (BM25 + dense, RRF) top 5 → generate (full prefill)
- P1 P0 + cross-encoder over the hybrid top 20 (first-stage interpolation)
- P2 P1 + Sentinel keeping a third of the context's tokens (3×)
- P3 P2 + AttnRank order
- P4 P3 + generation from cached passage KV (``sink``), cold (first pass)
  and warm (the same questions again, every passage cached)

Per pipeline: F1, EM, answer NLL (gold answer, teacher-forced after the very
prompt and cache), supporting-sentence recall, context tokens, time to first
token and seconds per question, each with a bootstrap 95% interval; and a
paired comparison of every pipeline against P0.

    python benchmarks/headline.py [--model qwen2.5-coder-1.5b] [--pipelines P0 P2 P4] [--questions N] [--prepare-only]

Artifacts are kept under .cache/ and reused when present (``--retrain`` to
rebuild them). Prints tables, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hotpotqa-distractor.jsonl"
CACHE = ROOT / ".cache"
CROSS_ENCODER = CACHE / "hotpotqa-cross-encoder"  # shared with benchmarks/rerank.py
SLOTS = 5


def slug(model: str) -> str:
    from ragline.engine.lm.packaged import canonical_model_id

    return canonical_model_id(model).split("/")[-1].lower()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def prepare(args, train, questions) -> dict:
    """The index and the three trained artifacts, built once and reused."""
    from ragline.engine.data.hotpotqa import paragraph_corpus
    from ragline.engine.index.build import build_index
    from ragline.eval.report import write_jsonl

    figures: dict = {}
    index = CACHE / "headline-index"
    if args.retrain or not (index / "meta.json").exists():
        log("indexing every paragraph (BM25 + dense)")
        corpus = CACHE / "headline-corpus.jsonl"
        write_jsonl(corpus, paragraph_corpus(questions))
        start = time.perf_counter()
        build_index(corpus, index, {"bm25": {}, "dense": {}}, progress=True)
        figures["index_seconds"] = round(time.perf_counter() - start, 1)

    if args.retrain or not (CROSS_ENCODER / "config.json").exists():
        figures.update(train_cross_encoder(train, str(index), args.cross_encoder_epochs))

    probe = CACHE / f"headline-sentinel-{slug(args.proxy)}.json"
    if args.retrain or not probe.exists():
        from ragline.compressors.sentinel_training import train_sentinel

        log(f"training Sentinel's probe on {args.sentinel_questions} training questions")
        start = time.perf_counter()
        # The default recipe learns from evidence-complete questions only: take those.
        labelled = [q for q in train if q.supporting and q.evidence_complete][: args.sentinel_questions]
        summary = train_sentinel(labelled, [], args.proxy, probe, device="cpu", progress=True)
        figures.update(sentinel_train_auc=round(summary["train_auc"], 4),
                       sentinel_seconds=round(time.perf_counter() - start, 1))

    profile = CACHE / f"headline-attnrank-{slug(args.model)}-{SLOTS}.json"
    if args.retrain or not profile.exists():
        from ragline.engine.lm.causal_lm import load_causal_lm
        from ragline.engine.lm.prompts import PromptBuilder
        from ragline.reorderers.attnrank_calibration import calibrate

        log(f"calibrating AttnRank for {SLOTS} slots on {args.calibration_questions} training questions")
        start = time.perf_counter()
        lm, tokenizer = load_causal_lm(args.model, device="cpu", dtype="float32")
        calibrated = calibrate(lm, tokenizer, args.model, train[: args.calibration_questions], SLOTS, PromptBuilder(),
                               progress=True, data_name=DATA.name)
        calibrated.save(profile)
        figures.update(attnrank_profile=[round(v, 4) for v in calibrated.profile],
                       calibration_seconds=round(time.perf_counter() - start, 1))
    return {"index": str(index), "probe": str(probe), "profile": str(profile), **figures}


def train_cross_encoder(train, index: str, epochs: int) -> dict:
    """As benchmarks/rerank.py trains it (8 BM25 hard negatives from the top 50,
    128 tokens), for ``epochs`` passes (rerank.py's default is 2)."""
    from ragline.rerankers.cross_encoder_training import (
        TrainingSettings,
        hotpotqa_hard_negatives,
        pairs_from_hotpotqa,
        train_cross_encoder,
    )

    log("training the cross-encoder on the training side")
    pairs = pairs_from_hotpotqa(train) + hotpotqa_hard_negatives(train, index, negatives=8, depth=50)
    start = time.perf_counter()
    summary = train_cross_encoder(pairs, "all-MiniLM-L6-v2", CROSS_ENCODER,
                                  TrainingSettings(epochs=epochs, max_length=128, seed=0), progress=True)
    return {"cross_encoder_pairs": summary["pairs"], "cross_encoder_epochs": epochs,
            "cross_encoder_seconds": round(time.perf_counter() - start, 1)}


METRICS = {  # per-question figure → whether higher is better
    "f1": True, "em": True, "answer_nll": False, "support_recall": True, "tokens_after": False,
    "ttft": False, "seconds": False,
}


def pipelines(args, artifacts: dict) -> dict:
    """P0–P4 as stage lists; retrieval stages are shared (each warms once)."""
    from ragline.compressors.sentinel import Sentinel
    from ragline.generators.generate import Generate
    from ragline.reorderers.attnrank import AttnRank
    from ragline.rerankers.cross_encoder import CrossEncoderRerank
    from ragline.retrievers.bm25 import BM25
    from ragline.retrievers.dense import Dense
    from ragline.retrievers.fusion import Fuse

    index = artifacts["index"]
    hybrid = [BM25(index, k=20), Dense(index, k=20), Fuse(top_k=20)]
    rerank = CrossEncoderRerank(str(CROSS_ENCODER), top_k=SLOTS, depth=20, max_length=128, first_stage_weight=1.0)
    sentinel = Sentinel(probe=artifacts["probe"], ratio=1 / 3, passages=SLOTS)
    attnrank = AttnRank(artifacts["profile"], passages=SLOTS, model=args.model)
    answer = dict(model=args.model, passages=SLOTS, max_new_tokens=args.max_new_tokens,
                  options={"device": "cpu", "dtype": "float32"})
    plain = Generate(**answer)
    cached = Generate(**answer, kv_reuse="sink", kv_options={"memory_bytes": 6 << 30})
    every = {
        "P0 plain RAG": hybrid + [plain],
        "P1 + cross-encoder": hybrid + [rerank, plain],
        "P2 + Sentinel 3x": hybrid + [rerank, sentinel, plain],
        "P3 + AttnRank": hybrid + [rerank, sentinel, attnrank, plain],
        "P4 + cached KV (sink)": hybrid + [rerank, sentinel, attnrank, cached],
    }
    return {name: stages for name, stages in every.items() if name.split()[0] in args.pipelines}


def per_question(rows: list[dict]) -> dict[str, dict[str, float]]:
    """question id → the figures compared (None where a run has none)."""
    table = {}
    for row in rows:
        figures = {name: row.get(name) for name in METRICS if name != "seconds"}
        figures["seconds"] = sum(row["stage_seconds"].values())
        table[row["id"]] = figures
    return table


def run_pipelines(args, test, figures: dict) -> None:
    from ragline.engine.pipeline import Pipeline
    from ragline.eval.intervals import bootstrap_interval, paired_comparison
    from ragline.eval.qa import evaluate_qa

    artifacts = {key: figures[key] for key in ("index", "probe", "profile")}
    chosen = [q for q in test if q.evidence_complete][: args.questions]
    figures["questions"] = len(chosen)
    runs: dict[str, dict] = {}
    for name, stages in pipelines(args, artifacts).items():
        # One question at a time: time to first token and seconds are then
        # each question's own, not a batch's (the hf backend batches prefill).
        pipeline = Pipeline(stages, top_k=SLOTS, batch_size=1)
        passes = ("cold", "warm") if "cached" in name else ("",)
        for label in passes:
            run_name = f"{name} {label}".strip()
            log(f"{run_name}: {len(chosen)} questions")
            start = time.perf_counter()
            rows, summary = evaluate_qa(chosen, pipeline, setting="open")
            runs[run_name] = per_question(rows)
            figures[f"{run_name} wall seconds"] = round(time.perf_counter() - start, 1)
            # Each run's means as it ends: a run stopped later still leaves these.
            log(f"{run_name}: " + ", ".join(f"{metric} {summary[metric]:.4g}" for metric in ("f1", "em", "answer_nll", "ttft")
                                            if summary.get(metric) is not None)
                + f" ({figures[f'{run_name} wall seconds']} s)")

    baseline = runs["P0 plain RAG"]
    print(f"\n{'pipeline':<32}" + "".join(f"{m:>22}" for m in METRICS))
    for run_name, table in runs.items():
        cells = []
        for metric in METRICS:
            values = [v[metric] for v in table.values() if v.get(metric) is not None]
            if not values:
                cells.append(f"{'n/a':>22}")
                continue
            mean, (low, high) = sum(values) / len(values), bootstrap_interval(values)
            figures[f"{run_name} {metric}"] = [round(mean, 4), round(low, 4), round(high, 4)]
            cells.append(f"{mean:>8.3f} [{low:.3f},{high:.3f}]".rjust(22))
        print(f"{run_name:<32}" + "".join(cells))

    print("\npaired against P0 (B − A, 95% interval, sign-test p, wins/ties/losses for the later pipeline):")
    for run_name, table in runs.items():
        if table is baseline:
            continue
        for metric, higher in METRICS.items():
            ids = [q for q in baseline if baseline[q].get(metric) is not None and table[q].get(metric) is not None]
            if not ids:
                continue
            result = paired_comparison([baseline[q][metric] for q in ids], [table[q][metric] for q in ids], higher)
            figures[f"{run_name} vs P0 {metric}"] = {k: (round(v, 4) if isinstance(v, float) else v)
                                                     for k, v in result.items() if k != "interval"}
            figures[f"{run_name} vs P0 {metric}"]["interval"] = [round(v, 4) for v in result["interval"]]
            low, high = result["interval"]
            print(f"  {run_name:<28} {metric:<15} {result['difference']:+9.4f} [{low:+.4f}, {high:+.4f}] "
                  f"p={result['p']:.3f} {result['wins']}/{result['ties']}/{result['losses']}")
    p0, warm = figures.get("P0 plain RAG ttft"), figures.get("P4 + cached KV (sink) warm ttft")
    if p0 and warm:
        figures["ttft_speedup_P4_warm_vs_P0"] = round(p0[0] / warm[0], 2)
    figures["load_average_at_end"] = round(__import__("os").getloadavg()[0], 2)
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--questions", type=int, default=None,
                        help="Held-out questions answered by every pipeline (default: every evidence-complete one).")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="The generator (AttnRank is calibrated on it).")
    parser.add_argument("--proxy", default="SmolLM2-135M-Instruct", help="Sentinel's proxy model.")
    parser.add_argument("--pipelines", nargs="+", default=["P0", "P1", "P2", "P3", "P4"], choices=["P0", "P1", "P2", "P3", "P4"],
                        help="Which pipelines to run (P0 always: the others are compared with it).")
    parser.add_argument("--sentinel-questions", type=int, default=100)
    parser.add_argument("--cross-encoder-epochs", type=int, default=1)
    parser.add_argument("--calibration-questions", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--retrain", action="store_true", help="Rebuild the index and retrain every artifact.")
    parser.add_argument("--prepare-only", action="store_true")
    args = parser.parse_args()
    args.pipelines = sorted(set(args.pipelines) | {"P0"})

    import os

    from ragline.engine.data.hotpotqa import read_hotpotqa, split_by_question

    questions = read_hotpotqa(args.data)
    train, test = split_by_question(questions, 0.3, 0)
    figures: dict = {"model": args.model, "proxy": args.proxy, "load_average_at_start": round(os.getloadavg()[0], 2),
                     "train_questions": len(train), "test_questions": len(test)}
    figures.update(prepare(args, train, questions))
    if args.prepare_only:
        print(json.dumps(figures))
        return
    run_pipelines(args, test, figures)


if __name__ == "__main__":
    main()
