"""Context compression on held-out HotpotQA questions: supporting-sentence
recall and QA EM/F1 (SmolLM2-135M-Instruct generating) at 2×, 3× and 5×,
for Sentinel (trained probe, and raw attention without one), AttentionRAG,
random / leading / embedding-similarity sentences, and the full context.

Questions: the test side of the question split (seed 0), only those whose
supporting facts are all in their context; each question's own ten
paragraphs (two gold, eight distractors) are the context. Sentinel's probe
is trained on the training side (``ragline train sentinel``, same split) if
``--probe`` does not exist yet. Each compressor scores a question once;
the three budgets select from the same scores. Token budgets are counted in
the generator's tokenizer; the achieved compression is reported.

    python benchmarks/compression.py [--questions 30] [--probe .cache/sentinel-smollm2.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hotpotqa-distractor.jsonl"
RATIOS = {"2x": 0.5, "3x": 1 / 3, "5x": 0.2}


def memoised(compressor, seconds: list[float]):
    """The compressor, scoring each (question, context) once across budgets;
    ``seconds`` collects the time of each first scoring."""
    cache: dict = {}
    score = compressor.score_units

    def score_once(question, passages, units):
        key = (question, tuple(u.text for u in units))
        if key not in cache:
            start = time.perf_counter()
            cache[key] = score(question, passages, units)
            seconds.append(time.perf_counter() - start)
        return cache[key]

    compressor.score_units = score_once
    return compressor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--questions", type=int, default=30)
    parser.add_argument("--probe", type=Path, default=ROOT / ".cache" / "sentinel-smollm2.json")
    parser.add_argument("--train-limit", type=int, default=160, help="training questions for Sentinel's probe")
    parser.add_argument("--auc-questions", type=int, default=60, help="held-out questions for the probe's AUC")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--no-qa", action="store_true", help="support recall only, no generation")
    args = parser.parse_args()

    from ragline.compressors.attention_rag import AttentionRAG
    from ragline.compressors.baselines import EmbeddingSentences, LeadingSentences, RandomSentences
    from ragline.compressors.sentinel import Sentinel
    from ragline.compressors.sentinel_training import train_sentinel
    from ragline.engine.data.hotpotqa import read_hotpotqa, split_by_question
    from ragline.engine.pipeline import Pipeline
    from ragline.eval.qa import evaluate_qa
    from ragline.generators.generate import Generate

    questions = [q for q in read_hotpotqa(args.data) if q.supporting]
    train, held_out = split_by_question(questions, 0.3, seed=0)
    test = [q for q in held_out if q.evidence_complete][: args.questions]
    figures: dict = {"questions": len(test)}
    if not args.probe.exists():
        args.probe.parent.mkdir(parents=True, exist_ok=True)
        summary = train_sentinel(train[: args.train_limit], held_out[: args.auc_questions], "SmolLM2-135M-Instruct",
                                 args.probe)
        print(f"trained {args.probe}: {summary}")
    training = json.loads(args.probe.read_text())["training"]
    figures.update({f"sentinel_{k}": v for k, v in training.items() if isinstance(v, (int, float))})

    generate = Generate(passages=10, max_new_tokens=args.max_new_tokens, cite=False, stop=["\n"],
                        options={"device": "cpu", "batch_size": 1})
    compressors = {
        "sentinel": Sentinel(probe=str(args.probe)),
        "sentinel_raw_attention": Sentinel(),
        "attention_rag": AttentionRAG(),
        "embedding": EmbeddingSentences(),
        "leading": LeadingSentences(),
        "random": RandomSentences(),
    }

    def run(stages):
        if args.no_qa:
            stages = stages[:-1]
        return evaluate_qa(test, Pipeline(stages) if stages else None, "distractor")[1]

    print(f"{'method':<24}{'budget':>7}{'achieved':>9}{'support':>9}{'EM':>7}{'F1':>7}{'s/q scoring':>13}")
    full = run([generate])
    figures.update(full_support_recall=full["support_recall"], full_em=full["em"], full_f1=full["f1"])
    print(f"{'full context':<24}{'1x':>7}{1.0:>9.2f}{full['support_recall']:>9.3f}"
          f"{full['em'] or 0:>7.3f}{full['f1'] or 0:>7.3f}{0:>13.2f}")
    for name, compressor in compressors.items():
        seconds: list[float] = []
        memoised(compressor, seconds)
        for label, ratio in RATIOS.items():
            compressor.ratio = ratio
            summary = run([compressor, generate])
            per_question = sum(seconds) / max(1, len(seconds))
            figures.update({f"{name}_{label}_support_recall": round(summary["support_recall"], 4),
                            f"{name}_{label}_achieved_ratio": round(summary["compression_ratio"], 3),
                            f"{name}_seconds_per_question": round(per_question, 3)})
            if summary["em"] is not None:
                figures.update({f"{name}_{label}_em": round(summary["em"], 4),
                                f"{name}_{label}_f1": round(summary["f1"], 4)})
            print(f"{name:<24}{label:>7}{summary['compression_ratio']:>9.2f}{summary['support_recall']:>9.3f}"
                  f"{summary['em'] or 0:>7.3f}{summary['f1'] or 0:>7.3f}{per_question:>13.2f}", flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
