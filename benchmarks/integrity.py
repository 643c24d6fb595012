"""What checking the checksums of cached files costs (in process).

The warm passage-KV path reads every block of a prompt from the disk tier in
a new process; this times exactly that read for SmolLM2-135M-shaped blocks
(30 layers, 3 KV heads, head dim 64, fp32) — 20 passages of ~290 tokens, the
5,831 cached tokens of the Cranfield case — with the checksum checked and
without, in alternating rounds. It also times checking a converted model's
folder (the packaged SmolLM2 conversion, if it is in the model cache), which
happens once per process when the model is first loaded.

    python benchmarks/integrity.py [--blocks 20] [--tokens 290] [--rounds 7]

Last line: one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=290)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    import torch

    from ragline.engine.integrity import damage_in
    from ragline.engine.lm.packaged import model_cache_dir
    from ragline.generators.kv_reuse.block_attention import BlockKV
    from ragline.generators.kv_reuse.block_store import BlockStore

    folder = Path(tempfile.mkdtemp(prefix="ragline-integrity-"))
    generator = torch.Generator().manual_seed(0)
    blocks = []
    for b in range(args.blocks):
        ids = tuple(range(b * 10_000, b * 10_000 + args.tokens))
        shape = (1, 3, args.tokens, 64)
        blocks.append(BlockKV(ids, [torch.randn(shape, generator=generator) for _ in range(30)],
                              [torch.randn(shape, generator=generator) for _ in range(30)]))
    writer = BlockStore("bench", directory=folder)
    for block in blocks:
        writer.get_or_compute(block.token_ids, lambda block=block: block)
    megabytes = sum(p.stat().st_size for p in folder.rglob("*.safetensors")) / 1e6

    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for verify in (True, False):
            store = BlockStore("bench", directory=folder, verify=verify)  # a new process's store: disk tier only
            started = time.perf_counter()
            for block in blocks:
                store.get_or_compute(block.token_ids, lambda: sys.exit("a block was recomputed"))
            times[verify].append(time.perf_counter() - started)
    checked, unchecked = statistics.median(times[True]), statistics.median(times[False])

    model = model_cache_dir() / "HuggingFaceTB--SmolLM2-135M-Instruct"
    model_check = None
    if damage_in(model) is None:
        started = time.perf_counter()
        damage_in(model)
        model_check = time.perf_counter() - started

    load = os.getloadavg()
    figures = {
        "blocks": args.blocks, "tokens_per_block": args.tokens, "block_megabytes": round(megabytes, 1),
        "read_blocks_checked_s": round(checked, 4), "read_blocks_unchecked_s": round(unchecked, 4),
        "checksum_cost_s": round(checked - unchecked, 4), "checked_over_unchecked": round(checked / unchecked, 3),
        "checksum_gb_per_s": round(megabytes / 1e3 / max(checked - unchecked, 1e-9), 2),
        "smollm2_folder_check_s": None if model_check is None else round(model_check, 3),
        "loadavg_1m": round(load[0], 2),
    }
    print(f"{args.blocks} blocks, {megabytes:.0f} MB: read {unchecked * 1000:.0f} ms unchecked, "
          f"{checked * 1000:.0f} ms checked (load {load[0]:.2f})", file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
