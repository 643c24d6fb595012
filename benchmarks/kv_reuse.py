"""Passage KV reuse with SmolLM2-135M-Instruct on the CPU: time to first token
with a warm block cache against a full prefill, the cache's size, and what
block attention does to answers.

Speed: prompts of 10 and 20 passages of ~200 tokens (real HotpotQA text,
consecutive paragraphs joined and cut at 200 tokens) and a ~30-token
question. ``full`` prefills the whole prompt (the block prompt's own tokens,
so tokenisation is identical); ``block`` is measured warm — the passages
were cached by an earlier question — so only the question block is
prefilled. Median of ``--repeats`` questions.

Quality: held-out HotpotQA questions with supporting facts complete, each
with its ten paragraphs (gold and distractors) as blocks, answered greedily
in plain mode (32 tokens, stop at a newline) by ``full``, ``block`` and
``sink`` (the remedy: blocks prefilled after the shared prefix).

    python benchmarks/kv_reuse.py [--questions 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hotpotqa-distractor.jsonl"


def make_passages(questions, tokenizer, count: int, tokens: int = 200):
    from ragline.engine.types import Passage

    texts, current = [], ""
    for paragraph in (p for q in questions for p in q.paragraphs):
        current = (current + " " + paragraph.text).strip()
        ids = tokenizer(current, add_special_tokens=False).input_ids
        if len(ids) >= tokens:
            texts.append(tokenizer.decode(ids[:tokens]))
            current = ""
            if len(texts) == count:
                break
    return [Passage(f"p{i}", f"p{i}", text, f"Passage {i + 1}") for i, text in enumerate(texts)]


def question_of_about(tokenizer, question: str, tokens: int = 30) -> str:
    ids = tokenizer(question + " Please answer from the passages above.", add_special_tokens=False).input_ids
    return tokenizer.decode(ids[:tokens])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--questions", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from ragline.engine.data.hotpotqa import read_hotpotqa, split_by_question
    from ragline.engine.index.docstore import query_over
    from ragline.engine.pipeline import Pipeline
    from ragline.eval.qa import evaluate_qa
    from ragline.generators.generate import Generate

    questions = read_hotpotqa(args.data)
    train, test = split_by_question(questions, 0.3, seed=0)
    figures: dict = {}

    def query_for(text, passages):
        return query_over("q", text, passages)

    def stage(mode: str, passages: int, max_new_tokens: int = 1, **kv) -> Generate:
        return Generate(passages=passages, max_new_tokens=max_new_tokens, cite=False, stop=["\n"],
                        options={"device": "cpu", "batch_size": 1}, kv_reuse=mode, kv_options=kv or None)

    print(f"{'passages':>8} {'prompt tokens':>13} {'full TTFT':>10} {'warm block TTFT':>16} {'speed-up':>9}")
    for count in (10, 20):
        full, block = stage("full", count), stage("block", count)
        full.warm_up()
        tokenizer = full.backend.tokenizer
        passages = make_passages(train, tokenizer, count)
        asked = [question_of_about(tokenizer, q.question) for q in test[: args.repeats + 1]]
        Pipeline([block]).run([query_for(asked[0], passages)])  # fills the cache (cold)
        full_ttft, block_ttft, prompt_tokens = [], [], 0
        for text in asked[1:]:
            done = Pipeline([full]).run([query_for(text, passages)])[0]
            full_ttft.append(done.trace[-1].extra["ttft"])
            prompt_tokens = done.trace[-1].extra["prompt_tokens"]
            warm = Pipeline([block]).run([query_for(text, passages)])[0]
            assert warm.trace[-1].extra["misses"] == 0, "the warm run missed the cache"
            block_ttft.append(warm.trace[-1].extra["ttft"])
        cached = warm.trace[-1].extra["cached_tokens"]
        bytes_per_token = block.reuse.store.bytes_held / cached
        f, b = statistics.median(full_ttft), statistics.median(block_ttft)
        figures.update({f"full_ttft_{count}": round(f, 3), f"block_warm_ttft_{count}": round(b, 3),
                        f"speedup_{count}": round(f / b, 2), f"prompt_tokens_{count}": prompt_tokens,
                        "cache_bytes_per_token": round(bytes_per_token)})
        print(f"{count:>8} {prompt_tokens:>13} {f:>9.3f}s {b:>15.3f}s {f / b:>8.1f}×", flush=True)
    print(f"cache: {figures['cache_bytes_per_token']:,} bytes per token (every layer's keys and values, fp32)")

    held_out = [q for q in test if q.evidence_complete][: args.questions]
    print(f"{'mode':<8}{'EM':>8}{'F1':>8}{'s/question':>12}")
    for mode, kv in (("full", {}), ("block", {}), ("sink", {})):
        start = time.perf_counter()
        summary = evaluate_qa(held_out, Pipeline([stage(mode, 10, 32, **kv)]), "distractor")[1]
        seconds = (time.perf_counter() - start) / len(held_out)
        figures.update({f"{mode}_em": round(summary["em"], 4), f"{mode}_f1": round(summary["f1"], 4)})
        print(f"{mode:<8}{summary['em']:>8.3f}{summary['f1']:>8.3f}{seconds:>12.2f}", flush=True)
    figures["questions"] = len(held_out)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
