"""Passage order and QA accuracy: a gold-position sweep on held-out HotpotQA
questions with SmolLM2-135M-Instruct, for the original order, AttnRank,
attention sorting and a fixed "most relevant at both ends" layout.

Each question gets N = 5 passages: its two gold paragraphs, side by side at
slots (p, p+1) for every p, among its first three distractors. The original
order and attention sorting (one round, starting from that order) depend on
p; AttnRank and the both-ends layout place passages by relevance (cosine of
all-MiniLM-L6-v2 between question and passage, a retriever's view), so their
input does not depend on p and they are scored once per question. The
AttnRank profile is calibrated at N = 5 on training-side questions in the
same prompt (plain answers, no citations). Writes docs/img/attnrank-profile.png
and docs/img/reorder.png; prints a table, then one JSON line of every figure.

    python benchmarks/reorder.py [--questions 30] [--calibration 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hotpotqa-distractor.jsonl"
SLOTS = 5


def both_ends(relevance_ranked: list) -> list:
    """Rank 1 first, rank 2 last, rank 3 second, rank 4 second to last, ..."""
    placed: list = [None] * len(relevance_ranked)
    left, right = 0, len(placed) - 1
    for i, item in enumerate(relevance_ranked):
        if i % 2 == 0:
            placed[left], left = item, left + 1
        else:
            placed[right], right = item, right - 1
    return placed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--questions", type=int, default=30)
    parser.add_argument("--calibration", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    import numpy as np

    from ragline.engine.data.hotpotqa import read_hotpotqa, split_by_question
    from ragline.engine.index.docstore import query_over
    from ragline.engine.lm.causal_lm import load_causal_lm
    from ragline.engine.lm.encoders import encode_texts, load_sentence_encoder
    from ragline.engine.lm.prompts import PromptBuilder, strip_citations
    from ragline.engine.types import Passage, Query
    from ragline.eval.qa import exact_match, f1_score
    from ragline.generators.generate import Generate
    from ragline.reorderers.attention_sort import AttentionSort
    from ragline.reorderers.attnrank import AttnRank
    from ragline.reorderers.attnrank_calibration import calibrate, plot_profile

    questions = read_hotpotqa(args.data)
    train, test = split_by_question(questions, 0.3, seed=0)
    test = [q for q in test if q.evidence_complete and len(q.gold_titles) == 2][: args.questions]
    figures: dict = {"questions": len(test), "slots": SLOTS}

    builder = PromptBuilder(cite=False)
    model, tokenizer = load_causal_lm("SmolLM2-135M-Instruct", device="cpu", dtype="float32")
    start = time.perf_counter()
    profile = calibrate(model, tokenizer, "SmolLM2-135M-Instruct", train[: args.calibration], SLOTS, builder)
    figures["calibration_seconds"] = round(time.perf_counter() - start, 1)
    figures["profile"] = [round(v, 4) for v in profile.profile]
    (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
    plot_profile(profile, ROOT / "docs" / "img" / "attnrank-profile.png")

    generate = Generate(passages=SLOTS, max_new_tokens=args.max_new_tokens, cite=False, stop=["\n"],
                        options={"device": "cpu", "batch_size": 1})
    profile_path = ROOT / ".cache" / f"attnrank-smollm2-{SLOTS}.json"
    profile_path.parent.mkdir(exist_ok=True)
    profile.save(profile_path)
    attnrank = AttnRank(str(profile_path), passages=SLOTS, cite=False)
    attention_sort = AttentionSort(passages=SLOTS, rounds=1, cite=False, device="cpu")
    encoder = load_sentence_encoder("all-MiniLM-L6-v2", "cpu")

    def as_query(question, passages) -> Query:
        return query_over(question.id, question.question, passages)

    def answer(question, passages) -> tuple[float, float]:
        generate.warm_up()
        conversation = builder.messages(question.question, passages)
        text = generate.backend.generate([conversation], generate.sampling)[0].text
        prediction = strip_citations(text)
        return exact_match(prediction, question.answer), f1_score(prediction, question.answer)

    positions = list(range(SLOTS - 1))
    scores: dict[str, dict[int, list[tuple[float, float]]]] = {m: {p: [] for p in positions}
                                                               for m in ("original", "attention_sort")}
    fixed: dict[str, list[tuple[float, float]]] = {"attnrank": [], "both_ends": []}
    sort_seconds: list[float] = []
    for number, question in enumerate(test, 1):
        gold_titles = set(question.gold_titles)
        gold = [p for p in question.paragraphs if p.title in gold_titles]
        distractors = [p for p in question.paragraphs if p.title not in gold_titles][: SLOTS - 2]
        as_passage = {p.title: Passage(f"{question.id}/{p.title}", p.title, p.text, p.title) for p in gold + distractors}
        for p in positions:
            order = [as_passage[x.title] for x in distractors[:p] + gold + distractors[p:]]
            scores["original"][p].append(answer(question, order))
            start = time.perf_counter()
            sorted_query = attention_sort.run([as_query(question, order)])[0]
            sort_seconds.append(time.perf_counter() - start)
            scores["attention_sort"][p].append(answer(question, sorted_query.passages))
        candidates = list(as_passage.values())
        vectors = encode_texts(encoder, [question.question] + [c.text for c in candidates])
        ranked = [candidates[i] for i in np.argsort(-(vectors[1:] @ vectors[0]), kind="stable")]
        fixed["attnrank"].append(answer(question, attnrank.run([as_query(question, ranked)])[0].passages))
        fixed["both_ends"].append(answer(question, both_ends(ranked)))
        print(f"question {number}/{len(test)}", flush=True)

    def mean(pairs, k):
        return statistics.fmean(x[k] for x in pairs)

    print(f"{'method':<16}" + "".join(f"{'gold@' + str(p + 1):>14}" for p in positions) + f"{'mean':>14}")
    for method, by_position in scores.items():
        cells = []
        for p in positions:
            em, f1 = mean(by_position[p], 0), mean(by_position[p], 1)
            figures[f"{method}_gold{p + 1}_em"], figures[f"{method}_gold{p + 1}_f1"] = round(em, 4), round(f1, 4)
            cells.append(f"{em:.3f}/{f1:.3f}")
        all_pairs = [x for p in positions for x in by_position[p]]
        figures[f"{method}_em"], figures[f"{method}_f1"] = round(mean(all_pairs, 0), 4), round(mean(all_pairs, 1), 4)
        print(f"{method:<16}" + "".join(f"{c:>14}" for c in cells) + f"{mean(all_pairs, 0):>7.3f}/{mean(all_pairs, 1):.3f}")
    for method, pairs in fixed.items():
        figures[f"{method}_em"], figures[f"{method}_f1"] = round(mean(pairs, 0), 4), round(mean(pairs, 1), 4)
        print(f"{method:<16}" + f"{'(independent of the gold position)':>56}{mean(pairs, 0):>7.3f}/{mean(pairs, 1):.3f}")
    figures["attention_sort_forward_passes_per_question"] = 1
    figures["attention_sort_seconds_per_question"] = round(statistics.fmean(sort_seconds), 3)
    figures["attnrank_forward_passes_per_question"] = 0
    figures["attnrank_calibration_forward_passes"] = profile.calibration["prompts"]
    _plot(figures, positions, ROOT / "docs" / "img" / "reorder.png")
    print(json.dumps(figures))


def _plot(figures: dict, positions: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [p + 1 for p in positions]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for method in ("original", "attention_sort"):
        axis.plot(x, [figures[f"{method}_gold{p}_f1"] for p in x], marker="o", label=method.replace("_", " "))
    for method, style in (("attnrank", "--"), ("both_ends", ":")):
        axis.axhline(figures[f"{method}_f1"], linestyle=style, color="grey" if method == "both_ends" else "black",
                     label=method.replace("_", " ") + " (any position)")
    axis.set_xlabel("slot of the first gold paragraph (of 5)")
    axis.set_ylabel("answer F1")
    axis.set_xticks(x)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
