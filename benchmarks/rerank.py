"""Cross-encoder reranking on HotpotQA paragraphs, trained and tested on
disjoint questions.

1. Split ../shared/data/hotpotqa-distractor.jsonl by question id (70/30, seeded).
2. Index every distinct paragraph of the file (BM25 + dense MiniLM) — the
   open setting: a test question must find its gold paragraphs among ~4,900.
3. Train a cross-encoder from the packaged all-MiniLM-L6-v2 on the training
   questions only: their gold paragraphs against their distractors and
   ``--hard-negatives`` BM25 hard negatives from that index.
4. On the test questions (those with a gold paragraph in the corpus), score
   paragraph nDCG@10, Recall@2 and Recall@10 of BM25, dense, hybrid (RRF),
   BM25 → cross-encoder (reranking BM25's top ``depth``), and the same with
   the cross-encoder's and BM25's scores interpolated (``--first-stage-weight``,
   fixed beforehand at 1: equal weight after z-normalisation, not tuned).
5. In-context reranking (ICR, zero-shot: SmolLM2-135M-Instruct's attention)
   of BM25's top ``--icr-depth``: calibrated with the N/A query (the paper's
   method), uncalibrated, and calibrated reading only the model's retrieval
   heads — a profile found by ``ragline calibrate heads``' detection on the
   training questions' paragraphs (``--heads`` to give one). Then the probe's
   cost on the ICR prompts of the first ``--probe-prompts`` test questions:
   a plain forward, the probed forward reading every head, and reading only
   the retrieval heads.

Prints a table, then one JSON line with every figure. The trained model is
kept (``--model``) for benchmarks/qa.py; ``--reuse`` skips training when it
exists (and head detection when ``--heads-out`` exists). ``--systems`` runs
some rows only; ``--limit`` scores the first N test questions only.

    python benchmarks/rerank.py [--depth 50] [--epochs 2] [--reuse] [--icr-depth 20] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hotpotqa-distractor.jsonl"
MODEL = ROOT / ".cache" / "hotpotqa-cross-encoder"
HEADS = ROOT / ".cache" / "smollm2-retrieval-heads.json"
METRICS = ("ndcg_cut_10", "recall_2", "recall_10", "recip_rank")
SYSTEMS = ("bm25", "dense", "hybrid_rrf", "bm25_cross_encoder", "bm25_cross_encoder_interpolated",
           "bm25_icr", "bm25_icr_uncalibrated", "bm25_icr_retrieval_heads")
# Also runnable by name: calibrated ICR summing every passage token (no outlier mask).
EXTRA_SYSTEMS = ("bm25_icr_unmasked",)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--model", type=Path, default=MODEL, help="Where the trained cross-encoder is kept.")
    parser.add_argument("--reuse", action="store_true", help="Use --model as is when it exists.")
    parser.add_argument("--base", default="all-MiniLM-L6-v2")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--hard-negatives", type=int, default=8, help="BM25 negatives per training question.")
    parser.add_argument("--first-stage-weight", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--depth", type=int, default=50, help="BM25 candidates the cross-encoder rescores.")
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS + EXTRA_SYSTEMS)
    parser.add_argument("--limit", type=int, help="Score only the first N test questions (all systems).")
    parser.add_argument("--icr-model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--icr-depth", type=int, default=20, help="BM25 candidates ICR reranks in one prompt.")
    parser.add_argument("--heads", type=Path, help="A retrieval-heads profile to use instead of detecting one.")
    parser.add_argument("--heads-out", type=Path, default=HEADS, help="Where a detected profile is kept.")
    parser.add_argument("--head-samples", type=int, default=20, help="Needle tasks of the head detection.")
    parser.add_argument("--probe-prompts", type=int, default=5, help="ICR prompts the probe's cost is timed on.")
    parser.add_argument("--probe-repeats", type=int, default=3, help="Timings per prompt (the median counts).")
    args = parser.parse_args()

    from ragline.engine.data.hotpotqa import gold_paragraph_qrels, paragraph_corpus, read_hotpotqa, split_by_question
    from ragline.engine.index.build import build_index
    from ragline.engine.pipeline import Pipeline
    from ragline.engine.retrieval_pipeline import fold_to_documents
    from ragline.engine.types import Query
    from ragline.eval.metrics import mean_scores
    from ragline.eval.report import write_jsonl
    from ragline.rerankers.cross_encoder import CrossEncoderRerank
    from ragline.rerankers.cross_encoder_training import (
        TrainingSettings,
        hotpotqa_hard_negatives,
        pairs_from_hotpotqa,
        train_cross_encoder,
    )
    from ragline.rerankers.icr import ICRRerank
    from ragline.retrievers.bm25 import BM25
    from ragline.retrievers.dense import Dense
    from ragline.retrievers.fusion import Fuse

    questions = read_hotpotqa(args.data)
    train, test = split_by_question(questions, args.test_fraction, args.seed)
    assert not {q.id for q in train} & {q.id for q in test}
    figures: dict = {"train_questions": len(train), "test_questions": len(test)}

    work = Path(tempfile.mkdtemp(prefix="ragline-rerank-"))
    corpus = paragraph_corpus(questions)
    write_jsonl(work / "corpus.jsonl", corpus)
    figures["corpus_paragraphs"] = len(corpus)
    start = time.perf_counter()
    index = str(work / "index")
    needs_dense = {"dense", "hybrid_rrf"} & set(args.systems)
    build_index(work / "corpus.jsonl", index, {"bm25": {}, "dense": {}} if needs_dense else {"bm25": {}})
    figures["index_seconds"] = round(time.perf_counter() - start, 1)

    wants_cross_encoder = any("cross_encoder" in name for name in args.systems)
    if wants_cross_encoder and args.reuse and (args.model / "config.json").exists():
        figures["training_seconds"] = None
    elif wants_cross_encoder:
        pairs = pairs_from_hotpotqa(train)
        if args.hard_negatives:
            pairs += hotpotqa_hard_negatives(train, index, negatives=args.hard_negatives, depth=args.depth)
        settings = TrainingSettings(epochs=args.epochs, max_length=args.max_length, seed=args.seed)
        start = time.perf_counter()
        summary = train_cross_encoder(pairs, args.base, args.model, settings, progress=True)
        figures.update(training_pairs=summary["pairs"], training_steps=summary["steps"],
                       training_seconds=round(time.perf_counter() - start, 1),
                       loss_first=round(summary["first_loss"], 4), loss_last=round(summary["last_loss"], 4))
        print(f"trained {args.model}: {summary}")

    qrels = gold_paragraph_qrels(test)
    topics = [Query(q.id, q.question) for q in test if q.id in qrels][: args.limit]
    qrels = {q.id: qrels[q.id] for q in topics}
    figures["scored_test_questions"] = len(qrels)

    heads = None
    if any("retrieval_heads" in name for name in args.systems) or args.probe_prompts:
        heads = args.heads or detected_heads(args, train, figures)

    def icr(**settings):
        return [BM25(index, k=args.icr_depth),
                ICRRerank(model=args.icr_model, depth=args.icr_depth, top_k=args.icr_depth, **settings)]

    systems = {
        "bm25": lambda: [BM25(index, k=100)],
        "dense": lambda: [Dense(index, k=100)],
        "hybrid_rrf": lambda: [BM25(index, k=100), Dense(index, k=100), Fuse(top_k=100)],
        "bm25_cross_encoder": lambda: [BM25(index, k=args.depth), CrossEncoderRerank(
            str(args.model), top_k=args.depth, depth=args.depth, max_length=args.max_length)],
        "bm25_cross_encoder_interpolated": lambda: [BM25(index, k=args.depth), CrossEncoderRerank(
            str(args.model), top_k=args.depth, depth=args.depth, max_length=args.max_length,
            first_stage_weight=args.first_stage_weight)],
        "bm25_icr": lambda: icr(),
        "bm25_icr_uncalibrated": lambda: icr(calibrate=False),
        "bm25_icr_retrieval_heads": lambda: icr(heads=str(heads)),
        "bm25_icr_unmasked": lambda: icr(mask_outliers=False),
    }
    print(f"{'system':<32}" + "".join(f"{m:>14}" for m in METRICS) + f"{'ms/query':>10}")
    for name in args.systems:
        pipeline = Pipeline(systems[name](), top_k=0)
        pipeline.warm_up()
        start = time.perf_counter()
        results = run_with_progress(pipeline, [Query(q.id, q.text) for q in topics], name)
        per_query_ms = (time.perf_counter() - start) * 1000 / len(topics)
        run = {q.id: dict(fold_to_documents(q.ranking)) for q in results}
        scores = mean_scores(qrels, run, METRICS)
        for metric, value in scores.items():
            figures[f"{name}_{metric}"] = round(value, 4)
        figures[f"{name}_ms_per_query"] = round(per_query_ms, 1)
        print(f"{name:<32}" + "".join(f"{scores[m]:>14.4f}" for m in METRICS) + f"{per_query_ms:>10.1f}")
    if args.probe_prompts:
        figures.update(probe_cost(args, index, topics[: args.probe_prompts], heads))
    print(json.dumps(figures))


def run_with_progress(pipeline, queries: list, name: str, batch: int = 16) -> list:
    """The pipeline over ``queries`` in batches, with a bar and the time left
    on a terminal (the attention rerankers take minutes)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    results = []
    columns = (TextColumn(name), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(name, total=len(queries))
        for start in range(0, len(queries), batch):
            results += pipeline.run(queries[start:start + batch])
            bar.advance(task, min(batch, len(queries) - start))
    return results


def detected_heads(args, train, figures: dict) -> Path:
    """The retrieval heads of ``--icr-model``, found on the training questions'
    paragraphs (kept at ``--heads-out``; reused with ``--reuse``)."""
    from ragline.engine.data.hotpotqa import paragraph_corpus
    from ragline.engine.lm.causal_lm import load_causal_lm
    from ragline.rerankers.retrieval_head_detection import detect_retrieval_heads

    if args.reuse and args.heads_out.exists():
        return args.heads_out
    model, tokenizer = load_causal_lm(args.icr_model, dtype="float32")
    start = time.perf_counter()
    profile = detect_retrieval_heads(model, tokenizer, args.icr_model, [p["text"] for p in paragraph_corpus(train)],
                                     samples=args.head_samples, seed=args.seed, progress=True,
                                     corpus_name="hotpotqa training paragraphs")
    profile.save(args.heads_out)
    best = profile.top[0]
    figures.update(head_detection_seconds=round(time.perf_counter() - start, 1),
                   head_detection_answered=profile.settings["answered"], retrieval_heads=len(profile.top),
                   best_retrieval_head=f"{best[0]}.{best[1]}",
                   best_retrieval_score=round(profile.scores[best[0]][best[1]], 4))
    print(f"retrieval heads ({profile.settings['answered']}/{args.head_samples} needles copied): {profile.top}")
    return args.heads_out


def probe_cost(args, index: str, topics: list, heads: Path) -> dict:
    """Mean milliseconds per ICR prompt (BM25's top ``--icr-depth`` of each
    topic, as the icr stage lays them out): a plain forward, the probed
    forward reading every head, and reading the retrieval heads only."""
    import functools
    import statistics

    import torch

    from ragline.engine.index.docstore import ranked_passages
    from ragline.engine.lm.causal_lm import load_causal_lm
    from ragline.engine.pipeline import Pipeline
    from ragline.rerankers.icr_prompt import fit_to_window, icr_prompt
    from ragline.rerankers.icr_scoring import InContextScorer
    from ragline.rerankers.retrieval_heads import RetrievalHeads
    from ragline.retrievers.bm25 import BM25

    model, tokenizer = load_causal_lm(args.icr_model)
    every_head = InContextScorer(model, tokenizer)
    retrieval_heads = InContextScorer(model, tokenizer, heads=RetrievalHeads.load(heads).top)
    queries = Pipeline([BM25(index, k=args.icr_depth)], top_k=0).run([type(q)(q.id, q.text) for q in topics])
    timings: dict[str, list[float]] = {"plain": [], "all_heads": [], "retrieval_heads": []}
    tokens = []
    for query in queries:
        passages, _ = fit_to_window(tokenizer, query.text, ranked_passages(query, args.icr_depth)[::-1],
                                    every_head.window)
        prompt = icr_prompt(tokenizer, query.text, passages)
        ids = torch.tensor([prompt.input_ids], device=model.device)
        tokens.append(len(prompt.input_ids))
        runs = {"plain": functools.partial(plain_forward, model, ids),
                "all_heads": functools.partial(every_head.read, prompt),
                "retrieval_heads": functools.partial(retrieval_heads.read, prompt)}
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.probe_repeats):  # interleaved, so that load from other work falls on all three alike
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - start)
        for name, values in seconds.items():
            timings[name].append(statistics.median(values))
    figures = {f"icr_probe_{name}_ms": round(1000 * statistics.fmean(values), 1) for name, values in timings.items()}
    figures.update(icr_probe_prompts=len(tokens), icr_probe_mean_tokens=round(statistics.fmean(tokens)),
                   icr_probe_repeats=args.probe_repeats)
    print("probe cost per ICR prompt: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    return figures


def plain_forward(model, ids) -> None:
    import torch

    with torch.inference_mode():
        model(input_ids=ids, use_cache=False, logits_to_keep=1)


if __name__ == "__main__":
    main()
