"""The spike of issue 29: passage (non-prefix) KV reuse inside vLLM, fed from
ragline's block store through vLLM's KV-connector interface
(``generators/kv_reuse/vllm_connector.py``), against ragline's own hf
backend in the same mode on the same model.

For each held-out evidence-complete HotpotQA question (the shared split),
its ten paragraphs (gold and distractors) are the passages. ragline's hf
backend answers in ``--mode`` (``block`` by default: pure block attention)
and scores the gold answer (teacher-forced NLL); the layout of the prompt's
cached blocks it answered from is saved to a file. vLLM's CPU engine then
answers the same prompt token ids with the connector writing that layout
into its paged cache (vLLM prefills only the final block), answers again
(the layout's blocks now in vLLM's own prefix cache), answers with an
ordinary prefill of the same ids (no layout), and scores the gold answer
over the layout through its prompt log-probabilities.

Reported: answers equal to the hf backend's (text and token count), the
largest NLL difference, answers equal to the ordinary prefill's (the layout
is not the same KV), and vLLM's median time to first token with the layout,
again, and with an ordinary prefill. In process; the layout is built before
the clock starts (ragline's cache warm), its file is read inside it.

    python benchmarks/vllm_kv_connector.py [--model SmolLM2-135M-Instruct] [--questions 10] [--mode block]

Prints a line per question, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hotpotqa-distractor.jsonl"


def held_out(limit: int):
    from ragline.engine.data.hotpotqa import read_hotpotqa, split_by_question

    _, test = split_by_question(read_hotpotqa(DATA))
    return [q for q in test if q.evidence_complete][:limit]


def passages_of(question):
    from ragline.engine.data.hotpotqa import paragraph_passage

    return [paragraph_passage(question.id, i, p) for i, p in enumerate(question.paragraphs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--mode", default="block", choices=["block", "sink", "blend"])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--window", type=int, default=4096)
    args = parser.parse_args()

    from ragline.engine.lm.prompts import PromptBuilder
    from ragline.engine.types import Sampling
    from ragline.generators.backend_registry import make_backend
    from ragline.generators.kv_reuse.block_prompt import block_prompt
    from ragline.generators.kv_reuse.layout_file import save_layout
    from ragline.generators.kv_reuse.passage_reuse import PassageKVReuse

    load = os.getloadavg()[0]
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=0.0, top_p=1.0, seed=0, stop=())
    builder = PromptBuilder()
    hf = make_backend("hf", args.model, device="cpu")
    reuse = PassageKVReuse(hf, mode=args.mode)
    reuse.warm_up()
    started = time.perf_counter()
    engine = make_backend("vllm", args.model, max_model_len=args.window, layout_connector=True)
    engine.warm_up()
    engine_seconds = time.perf_counter() - started
    rows = []
    with tempfile.TemporaryDirectory(prefix="ragline-layouts-") as scratch:
        for number, question in enumerate(held_out(args.questions)):
            passages = passages_of(question)
            prompt = block_prompt(hf.tokenizer, builder, question.question, passages)
            expected, _ = reuse.generate(builder, question.question, passages, sampling)
            answer_ids = list(hf.tokenizer(question.answer, add_special_tokens=False)["input_ids"])
            hf_nll = reuse.answer_nll(builder, question.question, passages, answer_ids)
            layout, _ = reuse.layout_for(prompt, len(prompt.final) + sampling.max_new_tokens)
            saved = save_layout(layout, prompt.all_ids, Path(scratch) / f"{number}.safetensors")
            got = engine.generate_ids(prompt.all_ids, sampling, layout=saved)
            again = engine.generate_ids(prompt.all_ids, sampling, layout=saved)  # now from vLLM's prefix cache
            full = engine.generate_ids(prompt.all_ids, sampling)
            nll = engine.continuation_nll(prompt.all_ids, answer_ids, saved)
            rows.append(dict(id=question.id, prompt_tokens=len(prompt.all_ids), layout_tokens=layout.length,
                             equal=got.text == expected.text and got.completion_tokens == expected.completion_tokens,
                             hf=expected.text, vllm=got.text, vllm_full=full.text, nll_hf=hf_nll, nll_vllm=nll,
                             ttft_layout=got.ttft, ttft_full=full.ttft, cached=got.cached_tokens,
                             again_equal=again.text == got.text, again_cached=again.cached_tokens,
                             ttft_again=again.ttft))
            row = rows[-1]
            print(f"{number:>3} {row['prompt_tokens']:>6} equal={row['equal']!s:<5} nll {hf_nll:.4f}/{nll:.4f} "
                  f"ttft {row['ttft_layout']:.3f}/{row['ttft_full']:.3f} s  hf={expected.text!r}  vllm={got.text!r}",
                  flush=True)
    engine.close()
    ratios = [r["ttft_full"] / r["ttft_layout"] for r in rows]
    figures = {
        "model": args.model, "mode": args.mode, "questions": len(rows),
        "answers_equal": sum(r["equal"] for r in rows),
        "largest_nll_difference": round(max(abs(r["nll_hf"] - r["nll_vllm"]) for r in rows), 6),
        "median_prompt_tokens": statistics.median(r["prompt_tokens"] for r in rows),
        "median_ttft_layout_s": round(statistics.median(r["ttft_layout"] for r in rows), 4),
        "median_ttft_full_s": round(statistics.median(r["ttft_full"] for r in rows), 4),
        "median_ttft_speedup": round(statistics.median(ratios), 2),
        "answers_equal_to_full_prefill": sum(r["vllm"] == r["vllm_full"] for r in rows),
        "repeat_answers_equal": sum(r["again_equal"] for r in rows),
        "repeat_cached_over_layout_tokens_min": round(min(r["again_cached"] / r["layout_tokens"] for r in rows), 3),
        "median_ttft_repeat_s": round(statistics.median(r["ttft_again"] for r in rows), 4),
        "engine_start_s": round(engine_seconds, 1),
        "load_average_start": round(load, 2), "load_average_end": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
