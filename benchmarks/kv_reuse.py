"""Passage KV reuse on the CPU, with both packaged models (SmolLM2-135M-Instruct
and Gemma-3-270M): time to first token with a warm block cache against a
full prefill, the cache's size, and what block attention — and its remedies,
sink and CacheBlend — do to answers.

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

Quality: held-out HotpotQA questions with supporting facts complete (41),
each with its ten paragraphs (gold and distractors) as blocks, by ``full``,
``block``, ``sink`` (blocks prefilled after the shared prefix) and ``blend``
at a few fractions (CacheBlend: that share of the context's tokens
recomputed). Per question and mode: the gold answer's NLL (teacher-forced
after the very cache; this first call also fills the block store), then a
greedy answer (plain mode, stop at a newline) whose time to first token is
warm — the blocks are cached, the layout (and the blend) is built anew, as
for a new combination of passages (``layout_bytes: 0``). Paired intervals
of each mode's NLL against full; for blend, the share of block's NLL gap to
full that it closes, with a bootstrap interval over questions.

    python benchmarks/kv_reuse.py [--models smollm2-135m-instruct gemma-3-270m] [--questions 41]
        [--fractions 0.05 0.15 0.3] [--repeats 3] [--passages 10 20 40] [--speed-only | --quality-only] [--threads N]
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


def stage(model: str, mode: str, passages: int, max_new_tokens: int = 1, **kv):
    from ragline.generators.generate import Generate

    return Generate(model=model, passages=passages, max_new_tokens=max_new_tokens, cite=False, stop=["\n"],
                    options={"device": "cpu", "batch_size": 1}, kv_reuse=mode, kv_options=kv or None)


def speed(model: str, counts, repeats: int, train, test, figures: dict) -> None:
    """Warm block TTFT against a full prefill at each passage count (see the module docstring)."""
    from ragline.engine.index.docstore import query_over
    from ragline.engine.pipeline import Pipeline

    print(f"\n{model}\n{'passages':>8} {'prompt tokens':>13} {'full TTFT':>10} {'warm TTFT':>10} {'speed-up':>9} "
          f"{'new order':>10} {'speed-up':>9}")
    breakdowns = []
    for count in counts:
        full, block = stage(model, "full", count), stage(model, "block", count)
        full.warm_up()
        tokenizer = full.backend.tokenizer
        window = min(full.backend.lm.config.max_position_embeddings, 8192)
        passages = make_passages(train, tokenizer, count, passage_tokens_for(count, window))
        asked = [question_of_about(tokenizer, q.question) for q in test[: repeats + 1]]
        Pipeline([block]).run([query_over("q", asked[0], passages)])  # fills the cache (cold)
        full_ttft, prompt_tokens = [], 0
        warm: dict[str, list[float]] = {key: [] for key in (
            "ttft", "new_order_ttft", "prompt_s", "layout_s", "new_order_layout_s", "rotation_s",
            "question_prefill_s", "other_s", "first_decode_step_s")}
        for number, text in enumerate(asked[1:], 1):
            done = Pipeline([full]).run([query_over("q", text, passages)])[0]
            full_ttft.append(done.trace[-1].extra["ttft"])
            prompt_tokens = done.trace[-1].extra["prompt_tokens"]
            same = Pipeline([block]).run([query_over("q", text, passages)])[0].trace[-1].extra
            assert same["misses"] == 0 and same["layout_reused"], "the warm run did not reuse the cache"
            # The same passages in a new order: every block cached, the layout new.
            moved = Pipeline([block]).run([query_over("q", text, passages[number:] + passages[:number])])[0]
            moved = moved.trace[-1].extra
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
        figures.update({f"{model}_full_ttft_{count}": round(f, 3), f"{model}_block_warm_ttft_{count}": round(b, 3),
                        f"{model}_speedup_{count}": round(f / b, 2),
                        f"{model}_block_warm_new_order_ttft_{count}": round(n, 3),
                        f"{model}_speedup_new_order_{count}": round(f / n, 2),
                        f"{model}_prompt_tokens_{count}": prompt_tokens,
                        f"{model}_cache_bytes_per_token": round(bytes_per_token)})
        figures.update({f"{model}_warm_{key}_{count}": round(m[key], 4) for key in (
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
    print(f"cache: {figures[f'{model}_cache_bytes_per_token']:,} bytes per token (every layer's keys and values, fp32)")


def quality(model: str, questions, fractions, max_new_tokens: int, figures: dict) -> None:
    """NLL, F1 and warm TTFT of full / block / sink / blend (see the module docstring)."""
    import numpy as np
    from tqdm import tqdm

    from ragline.engine.index.docstore import ranked_passages
    from ragline.engine.lm.prompts import strip_citations
    from ragline.engine.pipeline import Pipeline
    from ragline.eval.intervals import paired_comparison
    from ragline.eval.qa import candidate_pool, exact_match, f1_score

    modes = [("full", {}), ("block", {}), ("sink", {})] + [(f"blend {f:g}", {"blend_fraction": f}) for f in fractions]
    rows: dict[str, dict[str, list[float]]] = {}
    print(f"\n{model}: {len(questions)} questions, their ten paragraphs as blocks")
    print(f"{'mode':<12}{'answer NLL':>11}{'EM':>7}{'F1':>7}{'warm TTFT s':>13}{'recomputed':>11}")
    with tqdm(total=len(modes) * len(questions), desc=f"{model}: modes × questions", unit="answer") as bar:
        for label, kv in modes:
            mode = label.split()[0]
            # layout_bytes 0: no layout is kept, so the warm answer builds (and blends) its layout anew.
            generate = stage(model, mode, 10, max_new_tokens, **({} if mode == "full" else {"layout_bytes": 0, **kv}))
            values: dict[str, list[float]] = {key: [] for key in ("nll", "em", "f1", "ttft", "recomputed")}
            for question in questions:
                query = candidate_pool(question)
                query.passages = ranked_passages(query, 10)
                values["nll"].append(generate.answer_nll(query, question.answer))  # block modes: fills the store
                done = Pipeline([generate]).run([candidate_pool(question)])[0]
                note = done.trace[-1].extra
                answer = strip_citations(done.answer.text)
                values["em"].append(exact_match(answer, question.answer))
                values["f1"].append(f1_score(answer, question.answer))
                values["ttft"].append(note["ttft"])
                values["recomputed"].append(note.get("recomputed_tokens", 0) / max(1, note.get("cached_tokens", 1)))
                bar.update()
            rows[label] = values
            key = f"{model}_{label.replace(' ', '_')}"
            means = {name: float(np.mean(v)) for name, v in values.items()}
            figures.update({f"{key}_answer_nll": round(means["nll"], 4), f"{key}_em": round(means["em"], 4),
                            f"{key}_f1": round(means["f1"], 4), f"{key}_warm_ttft": round(means["ttft"], 4)})
            tqdm.write(f"{label:<12}{means['nll']:>11.3f}{means['em']:>7.3f}{means['f1']:>7.3f}{means['ttft']:>13.3f}"
                       f"{means['recomputed']:>11.2f}")
    full, block = np.asarray(rows["full"]["nll"]), np.asarray(rows["block"]["nll"])
    print(f"\n{model}: paired against full (B − A, 95% interval, sign-test p); gap closed = (block − mode) / (block − full)")
    rng = np.random.default_rng(0)
    for label in rows:
        if label == "full":
            continue
        mode_nll = np.asarray(rows[label]["nll"])
        nll = paired_comparison(full, mode_nll, higher_is_better=False)
        ttft_ratio = float(np.mean(rows[label]["ttft"]) / np.mean(rows["full"]["ttft"]))
        key = f"{model}_{label.replace(' ', '_')}"
        figures.update({f"{key}_nll_vs_full": round(nll["difference"], 4),
                        f"{key}_nll_vs_full_interval": [round(v, 4) for v in nll["interval"]],
                        f"{key}_ttft_vs_full": round(ttft_ratio, 3)})
        line = (f"{label:<12} NLL {nll['difference']:+.3f} [{nll['interval'][0]:+.3f}, {nll['interval'][1]:+.3f}] "
                f"p={nll['p']:.3f}  TTFT {ttft_ratio:.2f}× full")
        if label.startswith("blend"):
            samples = rng.integers(0, len(full), size=(2000, len(full)))
            gaps = (block[samples].mean(1) - mode_nll[samples].mean(1)) / (block[samples].mean(1) - full[samples].mean(1))
            closed = float((block.mean() - mode_nll.mean()) / (block.mean() - full.mean()))
            low, high = np.percentile(gaps, [2.5, 97.5])
            figures.update({f"{key}_gap_closed": round(closed, 3),
                            f"{key}_gap_closed_interval": [round(float(low), 3), round(float(high), 3)]})
            line += f"  gap closed {closed:.2f} [{low:.2f}, {high:.2f}]"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m"])
    parser.add_argument("--questions", type=int, default=None, help="held-out questions (default: all 41)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.15, 0.3])
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--passages", type=int, nargs="+", default=[10, 20, 40])
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--speed-only", action="store_true", help="skip the answer-quality part")
    only.add_argument("--quality-only", action="store_true", help="skip the speed part")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice, one per core); 1 is steadier on a busy machine")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from ragline.engine.data.hotpotqa import read_hotpotqa, split_by_question

    questions = read_hotpotqa(args.data)
    train, test = split_by_question(questions, 0.3, seed=0)
    held_out = [q for q in test if q.evidence_complete][: args.questions]
    figures: dict = {"threads": torch.get_num_threads(), "questions": len(held_out)}
    print(f"torch threads: {figures['threads']}")
    for model in args.models:
        if not args.quality_only:
            speed(model, args.passages, args.repeats, train, test, figures)
        if not args.speed_only:
            quality(model, held_out, args.fractions, args.max_new_tokens, figures)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
