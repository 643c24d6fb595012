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

Prints a table, then one JSON line with every figure. The trained model is
kept (``--model``) for benchmarks/qa.py; ``--reuse`` skips training when it exists.

    python benchmarks/rerank.py [--depth 50] [--epochs 2] [--reuse]
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
METRICS = ("ndcg_cut_10", "recall_2", "recall_10", "recip_rank")


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
        pairs_from_hotpotqa,
        pairs_from_qrels,
        train_cross_encoder,
    )
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
    build_index(work / "corpus.jsonl", index, {"bm25": {}, "dense": {}})
    figures["index_seconds"] = round(time.perf_counter() - start, 1)

    if args.reuse and (args.model / "config.json").exists():
        figures["training_seconds"] = None
    else:
        pairs = pairs_from_hotpotqa(train)
        if args.hard_negatives:
            train_qrels = gold_paragraph_qrels(train)
            topics = [(q.id, q.question) for q in train if q.id in train_qrels]
            pairs += pairs_from_qrels(train_qrels, topics, index, negatives=args.hard_negatives, depth=args.depth)
        settings = TrainingSettings(epochs=args.epochs, max_length=args.max_length, seed=args.seed)
        start = time.perf_counter()
        summary = train_cross_encoder(pairs, args.base, args.model, settings, progress=True)
        figures.update(training_pairs=summary["pairs"], training_steps=summary["steps"],
                       training_seconds=round(time.perf_counter() - start, 1),
                       loss_first=round(summary["first_loss"], 4), loss_last=round(summary["last_loss"], 4))
        print(f"trained {args.model}: {summary}")

    qrels = gold_paragraph_qrels(test)
    figures["scored_test_questions"] = len(qrels)
    topics = [Query(q.id, q.question) for q in test if q.id in qrels]
    reranker = CrossEncoderRerank(str(args.model), top_k=args.depth, depth=args.depth, max_length=args.max_length)
    interpolated = CrossEncoderRerank(str(args.model), top_k=args.depth, depth=args.depth, max_length=args.max_length,
                                      first_stage_weight=args.first_stage_weight)
    systems = {
        "bm25": [BM25(index, k=100)],
        "dense": [Dense(index, k=100)],
        "hybrid_rrf": [BM25(index, k=100), Dense(index, k=100), Fuse(top_k=100)],
        "bm25_cross_encoder": [BM25(index, k=args.depth), reranker],
        "bm25_cross_encoder_interpolated": [BM25(index, k=args.depth), interpolated],
    }
    print(f"{'system':<32}" + "".join(f"{m:>14}" for m in METRICS) + f"{'ms/query':>10}")
    for name, stages in systems.items():
        pipeline = Pipeline(stages, top_k=0)
        pipeline.warm_up()
        start = time.perf_counter()
        results = pipeline.run([Query(q.id, q.text) for q in topics])
        per_query_ms = (time.perf_counter() - start) * 1000 / len(topics)
        run = {q.id: dict(fold_to_documents(q.ranking)) for q in results}
        scores = mean_scores(qrels, run, METRICS)
        for metric, value in scores.items():
            figures[f"{name}_{metric}"] = round(value, 4)
        figures[f"{name}_ms_per_query"] = round(per_query_ms, 1)
        print(f"{name:<32}" + "".join(f"{scores[m]:>14.4f}" for m in METRICS) + f"{per_query_ms:>10.1f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
