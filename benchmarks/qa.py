"""End-to-end HotpotQA question answering with SmolLM2-135M-Instruct on a CPU.

Held-out questions (the test side of the split benchmarks/rerank.py trains
its cross-encoder on; only questions whose supporting facts are all in the
file, so that the gold setting is complete) answered three ways:

- gold: the generator sees only the gold paragraphs (the retrieval ceiling);
- bm25: BM25's top 5 from an index over every distinct paragraph of the file;
- bm25_cross_encoder: BM25's top 50 reranked by the trained cross-encoder
  (scores interpolated with BM25's, weight ``--first-stage-weight``), top 5.

Answers are generated greedily in plain mode (no citations) and scored with
SQuAD EM/F1. Prints a table, then one JSON line with every figure.

    python benchmarks/qa.py [--questions 40] [--reranker .cache/hotpotqa-cross-encoder]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hotpotqa-distractor.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--reranker", type=Path, default=ROOT / ".cache" / "hotpotqa-cross-encoder",
                        help="A cross-encoder trained on the training side (benchmarks/rerank.py writes it).")
    parser.add_argument("--first-stage-weight", type=float, default=1.0)
    parser.add_argument("--passages", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    from ragline.engine.data.hotpotqa import paragraph_corpus, read_hotpotqa, split_by_question
    from ragline.engine.index.build import build_index
    from ragline.engine.pipeline import Pipeline
    from ragline.eval.qa import evaluate_qa
    from ragline.eval.report import write_jsonl
    from ragline.generators.generate import Generate
    from ragline.rerankers.cross_encoder import CrossEncoderRerank
    from ragline.retrievers.bm25 import BM25

    if not (args.reranker / "config.json").exists():
        raise SystemExit(f"no cross-encoder at {args.reranker}: run benchmarks/rerank.py first")
    questions = read_hotpotqa(args.data)
    _, test = split_by_question(questions, 0.3, seed=0)
    test = [q for q in test if q.evidence_complete][: args.questions]

    work = Path(tempfile.mkdtemp(prefix="ragline-qa-"))
    write_jsonl(work / "corpus.jsonl", paragraph_corpus(questions))  # the corpus benchmarks/rerank.py searches
    index = str(work / "index")
    build_index(work / "corpus.jsonl", index, {"bm25": {}})

    def generator(passages: int) -> Generate:
        return Generate(passages=passages, max_new_tokens=args.max_new_tokens, cite=False, stop=["\n"],
                        options={"device": "cpu", "batch_size": 1})

    generate = generator(args.passages)
    gold = generator(10)  # every gold paragraph (two to four)
    systems = {
        "gold": ("gold", [gold]),
        "bm25": ("open", [BM25(index, k=args.passages), generate]),
        "bm25_cross_encoder": ("open", [BM25(index, k=50),
                                        CrossEncoderRerank(str(args.reranker), top_k=args.passages, depth=50,
                                                           max_length=128,
                                                           first_stage_weight=args.first_stage_weight), generate]),
    }
    figures: dict = {"questions": len(test), "model": generate.model}
    print(f"{'setting':<22}{'EM':>8}{'F1':>8}{'gold para recall':>18}{'s/question':>12}")
    for name, (setting, stages) in systems.items():
        start = time.perf_counter()
        rows, summary = evaluate_qa(test, Pipeline(stages, top_k=args.passages), setting)
        seconds = (time.perf_counter() - start) / len(test)
        figures.update({f"{name}_em": round(summary["em"], 4), f"{name}_f1": round(summary["f1"], 4),
                        f"{name}_gold_paragraph_recall": round(summary["gold_paragraph_recall"], 4),
                        f"{name}_seconds_per_question": round(seconds, 2),
                        f"{name}_ttft": round(summary["ttft"], 3) if summary["ttft"] else None})
        print(f"{name:<22}{summary['em']:>8.3f}{summary['f1']:>8.3f}{summary['gold_paragraph_recall']:>18.3f}{seconds:>12.2f}")
        for row in rows[:3]:
            print(f"    {row['answer']!r:<40} <- {row['prediction']!r}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
