"""Passage KV reuse with SmolLM2-135M-Instruct on the CPU: time to first token
with a warm block cache against a full prefill, the cache's size, and what
block attention does to answers.

Speed: prompts of 10, 20 and 40 passages of ~200 tokens (real HotpotQA
text, consecutive paragraphs joined and cut at 200 tokens; fewer at 40 so
that the prompt fits the model's 8K window) and a ~30-token question.
``full`` prefills the whole prompt (the block prompt's own tokens, so
tokenisation is identical); ``block`` is measured warm — the passages were
cached by an earlier question — so only the question block is prefilled:
once with the passages in the same order (their assembled layout is reused)
and once in a new order (the blocks are cached, the layout is built and its
keys rotated). The warm time to first token is broken down into the prompt's
rendering, the layout (block look-ups and copies), the rotation, the
question's prefill (one forward over the cache, timed on its own) and the
rest (``generate()``'s set-up and sampling); the first decoding step after it
is timed on its own too. Median of ``--repeats`` questions.

Quality: held-out HotpotQA questions with supporting facts complete, each
with its ten paragraphs (gold and distractors) as blocks, answered greedily
in plain mode (32 tokens, stop at a newline) by ``full``, ``block`` and
``sink`` (the remedy: blocks prefilled after the shared prefix).

    python benchmarks/kv_reuse.py [--questions 30] [--repeats 3] [--passages 10 20 40] [--speed-only] [--threads N]
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


def passage_tokens_for(count: int, window: int, wanted: int = 200) -> int:
    """~200 tokens per passage, fewer when ``count`` of them would not leave
    room in the window for the prefix, the numbers and the question."""
    return min(wanted, (window - 600) // count)


def question_of_about(tokenizer, question: str, tokens: int = 30) -> str:
    ids = tokenizer(question + " Please answer from the passages above.", add_special_tokens=False).input_ids
    return tokenizer.decode(ids[:tokens])


def forward_times(block, text: str, passages) -> tuple[float, float]:
    """The question block's prefill over the warm layout, and the first decoding
    step after it, each one forward timed on its own (no ``generate()``)."""
    import torch

    from ragline.generators.kv_reuse.block_prompt import block_prompt

    reuse, model = block.reuse, block.backend.lm
    prompt = block_prompt(block.backend.tokenizer, block.prompts, text, passages)
    layout, _ = reuse.layout_for(prompt, len(prompt.final) + 1)
    with layout.open_cache(model.config) as cache, torch.inference_mode():
        start = time.perf_counter()
        positions = torch.arange(layout.length, layout.length + len(prompt.final))[None]
        out = model(input_ids=torch.tensor([prompt.final]), past_key_values=cache, position_ids=positions,
                    use_cache=True, logits_to_keep=1)
        token = out.logits[0, -1].argmax().view(1, 1)
        prefilled = time.perf_counter()
        model(input_ids=token, past_key_values=cache, position_ids=positions[:, -1:] + 1, use_cache=True)
        return prefilled - start, time.perf_counter() - prefilled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--questions", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--passages", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--speed-only", action="store_true", help="skip the answer-quality part")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice, one per core); 1 is steadier on a busy machine")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

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

    figures["threads"] = torch.get_num_threads()
    print(f"torch threads: {figures['threads']}")
    print(f"{'passages':>8} {'prompt tokens':>13} {'full TTFT':>10} {'warm TTFT':>10} {'speed-up':>9} "
          f"{'new order':>10} {'speed-up':>9}")
    breakdowns = []
    for count in args.passages:
        full, block = stage("full", count), stage("block", count)
        full.warm_up()
        tokenizer = full.backend.tokenizer
        window = full.backend.lm.config.max_position_embeddings
        passages = make_passages(train, tokenizer, count, passage_tokens_for(count, window))
        asked = [question_of_about(tokenizer, q.question) for q in test[: args.repeats + 1]]
        Pipeline([block]).run([query_for(asked[0], passages)])  # fills the cache (cold)
        full_ttft, prompt_tokens = [], 0
        warm: dict[str, list[float]] = {key: [] for key in (
            "ttft", "new_order_ttft", "prompt_s", "layout_s", "new_order_layout_s", "rotation_s",
            "question_prefill_s", "other_s", "first_decode_step_s")}
        for number, text in enumerate(asked[1:], 1):
            done = Pipeline([full]).run([query_for(text, passages)])[0]
            full_ttft.append(done.trace[-1].extra["ttft"])
            prompt_tokens = done.trace[-1].extra["prompt_tokens"]
            same = Pipeline([block]).run([query_for(text, passages)])[0].trace[-1].extra
            assert same["misses"] == 0 and same["layout_reused"], "the warm run did not reuse the cache"
            # The same passages in a new order: every block cached, the layout new.
            moved = Pipeline([block]).run([query_for(text, passages[number:] + passages[:number])])[0].trace[-1].extra
            assert moved["misses"] == 0 and not moved["layout_reused"]
            prefill_s, decode_s = forward_times(block, text, passages)
            for key, value in (("ttft", same["ttft"]), ("new_order_ttft", moved["ttft"]),
                               ("prompt_s", same["prompt_s"]), ("layout_s", same["layout_s"]),
                               ("new_order_layout_s", moved["layout_s"]), ("rotation_s", moved["rotation_s"]),
                               ("question_prefill_s", prefill_s), ("first_decode_step_s", decode_s),
                               # generate()'s own set-up and sampling: what the parts above leave of the TTFT
                               ("other_s", same["ttft"] - same["prompt_s"] - same["layout_s"] - prefill_s)):
                warm[key].append(value)
        cached = same["cached_tokens"]
        bytes_per_token = block.reuse.store.bytes_held / cached
        f = statistics.median(full_ttft)
        m = {key: statistics.median(values) for key, values in warm.items()}
        b, n = m["ttft"], m["new_order_ttft"]
        figures.update({f"full_ttft_{count}": round(f, 3), f"block_warm_ttft_{count}": round(b, 3),
                        f"speedup_{count}": round(f / b, 2), f"block_warm_new_order_ttft_{count}": round(n, 3),
                        f"speedup_new_order_{count}": round(f / n, 2), f"prompt_tokens_{count}": prompt_tokens,
                        "cache_bytes_per_token": round(bytes_per_token)})
        figures.update({f"warm_{key}_{count}": round(m[key], 4) for key in (
            "prompt_s", "layout_s", "new_order_layout_s", "rotation_s", "question_prefill_s", "other_s",
            "first_decode_step_s")})
        breakdowns.append((count, m))
        print(f"{count:>8} {prompt_tokens:>13} {f:>9.3f}s {b:>9.3f}s {f / b:>8.1f}× {n:>9.3f}s {f / n:>8.1f}×",
              flush=True)
    print("warm time to first token, median seconds (same order: layout reused; new order: layout built):")
    print(f"{'passages':>8} {'prompt':>8} {'layout':>8} {'new-order layout':>17} {'rotation':>9} "
          f"{'question prefill':>17} {'other':>8} {'first decode step':>18}")
    for count, m in breakdowns:
        print(f"{count:>8} {m['prompt_s']:>8.3f} {m['layout_s']:>8.3f} {m['new_order_layout_s']:>17.3f} "
              f"{m['rotation_s']:>9.3f} {m['question_prefill_s']:>17.3f} {m['other_s']:>8.3f} "
              f"{m['first_decode_step_s']:>18.3f}")
    print(f"cache: {figures['cache_bytes_per_token']:,} bytes per token (every layer's keys and values, fp32)")
    if args.speed_only:
        print(json.dumps(figures))
        return

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
