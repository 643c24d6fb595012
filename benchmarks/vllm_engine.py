"""The vllm backend on vLLM's real engine against the hf backend, on this machine.

Questions: the 41 evidence-complete held-out HotpotQA questions of the shared
split (by question id, 30% held out, seed 0). Each is asked over five of its
own paragraphs (its gold ones, then distractors, in the file's order), so no
index is needed and both backends read exactly the same prompts (ragline's
prompt, rendered by ragline's chat template code, as token ids).

1. Batch QA throughput: all questions as one batch, greedy, 32 tokens, on
   each backend (hf: its own batching, ``--hf-batch`` at a time; vLLM: one
   batch of engine requests). Questions per second, and whether the answers
   are equal (text and token count), question by question.
2. Time to first token through vLLM's prefix cache: each question's passages
   asked cold (prefix cache emptied first), then the same passages with a
   second question (warm: the system prompt and passages come from the
   cache). Median TTFT cold and warm, one request at a time.

Model loads are timed but not in the rates. In process (one Python process;
``ragline ask --backend vllm`` adds its start-up and the engine's load).

    python benchmarks/vllm_engine.py [--model SmolLM2-135M-Instruct] [--questions 41]

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
    vllm = make_backend("vllm", args.model, max_model_len=args.max_model_len)
    started = time.perf_counter()
    vllm.warm_up()
    figures["vllm_load_seconds"] = round(time.perf_counter() - started, 1)
    log(f"loaded: hf {figures['hf_load_seconds']} s, vLLM {figures['vllm_load_seconds']} s")

    # One short warm-up request each, so neither rate includes first-call costs.
    hf.generate(conversations[:1], greedy)
    vllm.generate(follow_ups[:1], greedy)
    vllm.llm.reset_prefix_cache()

    timings = {}
    answers = {}
    for name, backend in (("hf", hf), ("vllm", vllm)):
        figures[f"load_average_before_{name}"] = round(os.getloadavg()[0], 2)
        started = time.perf_counter()
        answers[name] = backend.generate(conversations, greedy)
        timings[name] = time.perf_counter() - started
        figures[f"{name}_questions_per_second"] = round(len(chosen) / timings[name], 3)
        log(f"{name}: {len(chosen)} questions in {timings[name]:.1f} s")
    figures["throughput_vllm_over_hf"] = round(timings["hf"] / timings["vllm"], 2)
    same_text = [a.text == b.text for a, b in zip(answers["hf"], answers["vllm"])]
    same_tokens = [a.completion_tokens == b.completion_tokens for a, b in zip(answers["hf"], answers["vllm"])]
    figures["answers_equal"] = sum(same_text)
    figures["answer_token_counts_equal"] = sum(same_tokens)
    figures["differing_answers"] = [{"question": q.id, "hf": a.text, "vllm": b.text}
                                    for q, a, b, same in zip(chosen, answers["hf"], answers["vllm"], same_text) if not same]
    for name in answers:
        figures[f"{name}_f1"] = round(statistics.fmean(f1_score(g.text, q.answer) for g, q in zip(answers[name], chosen)), 4)

    cold, warm, cached = [], [], []
    vllm.llm.reset_prefix_cache()
    figures["load_average_before_ttft"] = round(os.getloadavg()[0], 2)
    for first, second in zip(conversations, follow_ups):
        vllm.llm.reset_prefix_cache()
        cold.append(vllm.generate([first], greedy)[0].ttft)
        again = vllm.generate([second], greedy)[0]
        warm.append(again.ttft)
        cached.append(again.cached_tokens / again.prompt_tokens)
    figures["vllm_ttft_cold_median_s"] = round(statistics.median(cold), 4)
    figures["vllm_ttft_warm_median_s"] = round(statistics.median(warm), 4)
    figures["vllm_ttft_warm_speedup"] = round(statistics.median(cold) / statistics.median(warm), 2)
    figures["vllm_warm_prompt_share_cached"] = round(statistics.fmean(cached), 3)
    log(f"vLLM TTFT cold {figures['vllm_ttft_cold_median_s']} s, warm {figures['vllm_ttft_warm_median_s']} s "
        f"({figures['vllm_ttft_warm_speedup']}×, {figures['vllm_warm_prompt_share_cached']:.0%} of the prompt cached)")
    vllm.close()
    figures["load_average_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
