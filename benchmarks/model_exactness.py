"""The two mechanisms everything leans on, checked on a real packaged model
(the suite checks them on tiny random ones): the attention probe against
eager attention summed onto spans, and block attention (passages prefilled
alone, laid out with rotated keys) against one forward with a block-diagonal
mask. Then one greedy answer from the model, as a smoke test of its prompt.

The text is real: the first held-out HotpotQA question with its first
paragraphs as the blocks. Default model: Qwen2.5-Coder-1.5B-Instruct
(``make extra-models``; GQA with six query heads per key-value head, RoPE
base 1e6).

    python benchmarks/model_exactness.py [--model qwen2.5-coder-1.5b] [--paragraphs 4]

Last line: one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "hotpotqa-distractor.jsonl"


def probe_error(model, input_ids: torch.Tensor, spans: list[tuple[int, int]]) -> float:
    """Largest difference between the probe's span sums (SDPA forward) and
    eager attention's, over every layer and head, read from the last token."""
    from ragline.engine.lm.attention_probe import AttentionProbe, span_ids_from_ranges

    length = input_ids.shape[1]
    probed = AttentionProbe(model, backend="torch").run(input_ids, span_ids_from_ranges(spans, length)).attention
    attention = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            layers = model(input_ids, output_attentions=True).attentions
    finally:
        model.set_attn_implementation(attention)
    eager = torch.stack([torch.stack([a[:, :, [length - 1], s:e].sum(-1) for s, e in spans], -1) for a in layers])
    return float((probed - eager).abs().max())


def block_attention_error(model, blocks: list[list[int]], final: list[int]) -> tuple[float, bool]:
    """Largest logit difference over the final tokens between cached blocks
    laid out and the block-diagonal forward, and whether the argmax agrees
    at every final position."""
    from ragline.generators.kv_reuse.block_attention import assemble_cache, final_block_logits, prefill_block

    cached = final_block_logits(model, assemble_cache(model, [prefill_block(model, b) for b in blocks]), final)
    ids = [t for b in blocks for t in b] + list(final)
    total, mask, start = len(ids), torch.zeros(len(ids), len(ids), dtype=torch.bool), 0
    for block in blocks:
        mask[start:start + len(block), start:start + len(block)] = torch.ones(len(block), len(block)).tril().bool()
        start += len(block)
    mask[start:] = torch.ones(total, total).tril().bool()[start:]
    with torch.no_grad():
        reference = model(input_ids=torch.tensor([ids]), attention_mask=mask[None, None]).logits[0, start:].float()
    return float((cached - reference).abs().max()), bool((cached.argmax(-1) == reference.argmax(-1)).all())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--paragraphs", type=int, default=4, help="paragraphs of the question used as blocks")
    args = parser.parse_args()

    from ragline.engine.data.hotpotqa import read_hotpotqa, split_by_question
    from ragline.engine.lm.causal_lm import load_causal_lm
    from ragline.engine.lm.packaged import canonical_model_id

    figures: dict = {"model": canonical_model_id(args.model), "load_average_at_start": round(os.getloadavg()[0], 2)}
    start = time.perf_counter()
    model, tokenizer = load_causal_lm(args.model, device="cpu", dtype="float32")
    figures["load_seconds"] = round(time.perf_counter() - start, 1)
    config = model.config
    figures.update(layers=config.num_hidden_layers, query_heads=config.num_attention_heads,
                   key_value_heads=config.num_key_value_heads,
                   rope_theta=(getattr(config, "rope_parameters", None) or {}).get("rope_theta"))

    questions = [q for q in read_hotpotqa(args.data) if q.evidence_complete]
    question = split_by_question(questions, 0.3, 0)[1][0]
    paragraphs = [p.text for p in question.paragraphs[: args.paragraphs]]
    blocks = [tokenizer(text + "\n", add_special_tokens=False).input_ids for text in paragraphs]
    final = tokenizer(f"Question: {question.question}\nAnswer:", add_special_tokens=False).input_ids

    ids, spans = [], []
    for block in blocks:
        spans.append((len(ids), len(ids) + len(block)))
        ids += block
    spans.append((len(ids), len(ids) + len(final) - 1))
    ids += final
    figures["tokens"] = len(ids)
    start = time.perf_counter()
    figures["probe_max_abs_error"] = probe_error(model, torch.tensor([ids]), spans)
    error, argmax_equal = block_attention_error(model, blocks, final)
    figures["block_attention_max_logit_error"] = error
    figures["block_attention_argmax_equal"] = argmax_equal
    figures["exactness_seconds"] = round(time.perf_counter() - start, 1)

    from ragline.engine.data.hotpotqa import paragraph_passage
    from ragline.engine.index.docstore import query_over
    from ragline.engine.pipeline import Pipeline
    from ragline.generators.generate import Generate

    passages = [paragraph_passage(question.id, i, p) for i, p in enumerate(question.paragraphs)]
    query = query_over(question.id, question.question, passages)
    start = time.perf_counter()
    answer = Pipeline([Generate(model=args.model, passages=len(passages), max_new_tokens=24, cite=False)], top_k=0).run([query])[0]
    figures["answer_seconds"] = round(time.perf_counter() - start, 1)
    figures["question"] = question.question
    figures["gold_answer"] = question.answer
    figures["answer"] = answer.answer.text if answer.answer else None
    figures["load_average_at_end"] = round(os.getloadavg()[0], 2)
    for key, value in figures.items():
        print(f"{key:<34} {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
