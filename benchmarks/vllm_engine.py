"""The vllm backend on vLLM's real engine against the hf backend, on this machine.

Questions: the 41 evidence-complete held-out HotpotQA questions of the shared
split (by question id, 30% held out, seed 0). Each is asked over five of its
own paragraphs (its gold ones, then distractors, in the file's order), so no
index is needed and both backends read exactly the same prompts (ragline's
prompt, rendered by ragline's chat template code, as token ids).

1. Batch QA throughput: all questions as one batch, greedy, 32 tokens, on
   each backend (hf: its own batching, ``--hf-batch`` at a time; vLLM: one
   batch of engine requests). Questions per second, and whether the answers
   are equal (text and token count), question by question; and the gold
   answer's NLL on each backend (vLLM's from prompt log-probabilities), the
   largest difference.
2. Time to first token through vLLM's prefix cache: each question's passages
   asked cold (prefix cache emptied first), then the same passages with a
   second question (warm: the system prompt and passages come from the
   cache). Median TTFT cold and warm, one request at a time.

Both steps run once per vLLM engine of ``--block-sizes`` (tokens per
KV-cache block; vLLM's prefix cache reuses whole blocks only), one engine
after another, against one hf run. Model loads are timed but not in the
rates. In process (one Python process; ``ragline ask --backend vllm`` adds
its start-up and the engine's load).

    python benchmarks/vllm_engine.py [--model SmolLM2-135M-Instruct] [--questions 41] [--block-sizes 128 32]

Prints one line per step, then one JSON line with every figure. (Not named
vllm.py: run as a script, it would shadow the vllm package.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hotpotqa-distractor.jsonl"
PASSAGES = 5


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message} (load {os.getloadavg()[0]:.2f})", flush=True)


def passages_for(question):
    """Gold paragraphs first, then distractors, five in all."""
    from ragline.engine.data.hotpotqa import paragraph_passage

    gold = set(question.gold_titles)
    order = sorted(range(len(question.paragraphs)), key=lambda i: question.paragraphs[i].title not in gold)
    return [paragraph_passage(question.id, i, question.paragraphs[i]) for i in order[:PASSAGES]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--questions", type=int, default=41)
    parser.add_argument("--hf-batch", type=int, default=8)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[128, 32],
                        help="vLLM engines to measure, one after another, by KV-cache block size (0: the backend's default)")
    args = parser.parse_args()

    from ragline.engine.data.hotpotqa import read_hotpotqa, split_by_question
    from ragline.engine.lm.prompts import PromptBuilder
    from ragline.engine.types import Sampling
    from ragline.eval.qa import f1_score
    from ragline.generators.backend_registry import make_backend

    _, test = split_by_question(read_hotpotqa(DATA), 0.3, 0)
    chosen = [q for q in test if q.evidence_complete][: args.questions]
    prompts = PromptBuilder(None, True, 0)
    conversations = [prompts.messages(q.question, passages_for(q)) for q in chosen]
    follow_ups = [prompts.messages(f"Which passages answer this: {q.question}", passages_for(q)) for q in chosen]
    greedy = Sampling(max_new_tokens=32, temperature=0.0, top_p=1.0, seed=0, stop=())
    figures: dict = {"model": args.model, "questions": len(chosen), "load_average_at_start": round(os.getloadavg()[0], 2)}

    hf = make_backend("hf", args.model, device="cpu", batch_size=args.hf_batch)
    started = time.perf_counter()
    hf.warm_up()
    figures["hf_load_seconds"] = round(time.perf_counter() - started, 1)
    log(f"loaded: hf {figures['hf_load_seconds']} s")
    hf.generate(conversations[:1], greedy)  # a first call's costs stay out of the rate
    figures["load_average_before_hf"] = round(os.getloadavg()[0], 2)
    started = time.perf_counter()
    hf_answers = hf.generate(conversations, greedy)
    hf_seconds = time.perf_counter() - started
    figures["hf_questions_per_second"] = round(len(chosen) / hf_seconds, 3)
    figures["hf_f1"] = round(statistics.fmean(f1_score(g.text, q.answer) for g, q in zip(hf_answers, chosen)), 4)
    log(f"hf: {len(chosen)} questions in {hf_seconds:.1f} s")
    hf_nll = [hf.answer_nll(c, q.answer) for c, q in zip(conversations, chosen)]
    for block_size in args.block_sizes:
        figures.update(measure_vllm(args, block_size, conversations, follow_ups, greedy, chosen, hf_answers, hf_seconds,
                                    hf_nll))
    figures["load_average_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(figures))


def measure_vllm(args, block_size: int, conversations, follow_ups, greedy, chosen, hf_answers, hf_seconds: float,
                 hf_nll: list[float]) -> dict:
    """One vLLM engine (``block_size`` 0: the backend's default): its batch
    throughput against the hf backend's, equal answers, the gold answers'
    NLL against the hf backend's, and TTFT cold vs warm."""
    from ragline.eval.qa import f1_score
    from ragline.generators.backend_registry import make_backend

    label = f"vllm_block_{block_size or 'default'}"
    figures: dict = {}
    vllm = make_backend("vllm", args.model, max_model_len=args.max_model_len, block_size=block_size or None)
    started = time.perf_counter()
    vllm.warm_up()
    figures[f"{label}_load_seconds"] = round(time.perf_counter() - started, 1)
    figures[f"{label}_block_size"] = vllm.llm.llm_engine.vllm_config.cache_config.block_size
    vllm.generate(follow_ups[:1], greedy)  # a first call's costs stay out of the rate
    vllm.llm.reset_prefix_cache()
    figures[f"{label}_load_average_before"] = round(os.getloadavg()[0], 2)
    started = time.perf_counter()
    answers = vllm.generate(conversations, greedy)
    seconds = time.perf_counter() - started
    figures[f"{label}_questions_per_second"] = round(len(chosen) / seconds, 3)
    figures[f"{label}_throughput_over_hf"] = round(hf_seconds / seconds, 2)
    same = [a.text == b.text and a.completion_tokens == b.completion_tokens for a, b in zip(hf_answers, answers)]
    figures[f"{label}_answers_equal"] = sum(same)
    figures[f"{label}_differing_answers"] = [{"question": q.id, "hf": a.text, "vllm": b.text}
                                             for q, a, b, equal in zip(chosen, hf_answers, answers, same) if not equal]
    figures[f"{label}_f1"] = round(statistics.fmean(f1_score(g.text, q.answer) for g, q in zip(answers, chosen)), 4)
    differences = [abs(vllm.answer_nll(c, q.answer) - nll) for c, q, nll in zip(conversations, chosen, hf_nll)]
    figures[f"{label}_largest_answer_nll_difference"] = round(max(differences), 6)
    log(f"{label}: {len(chosen)} questions in {seconds:.1f} s ({figures[f'{label}_throughput_over_hf']}× hf), "
        f"{sum(same)} answers equal, largest NLL difference {max(differences):.2e}")

    cold, warm, cached = [], [], []
    for first, second in zip(conversations, follow_ups):
        vllm.llm.reset_prefix_cache()
        cold.append(vllm.generate([first], greedy)[0].ttft)
        again = vllm.generate([second], greedy)[0]
        warm.append(again.ttft)
        cached.append(again.cached_tokens / again.prompt_tokens)
    figures[f"{label}_ttft_cold_median_s"] = round(statistics.median(cold), 4)
    figures[f"{label}_ttft_warm_median_s"] = round(statistics.median(warm), 4)
    figures[f"{label}_ttft_warm_speedup"] = round(statistics.median(cold) / statistics.median(warm), 2)
    figures[f"{label}_warm_prompt_share_cached"] = round(statistics.fmean(cached), 3)
    log(f"{label}: TTFT cold {figures[f'{label}_ttft_cold_median_s']} s, warm {figures[f'{label}_ttft_warm_median_s']} s "
        f"({figures[f'{label}_ttft_warm_speedup']}×, {figures[f'{label}_warm_prompt_share_cached']:.0%} of the prompt cached)")
    vllm.close()
    return figures


if __name__ == "__main__":
    main()
