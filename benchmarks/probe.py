"""What the attention probe costs: a probed forward of SmolLM2-135M-Instruct
against a plain SDPA forward of the same tokens, and against eager attention
with ``output_attentions=True`` (what the probe replaces).

Each (method, length) runs in a fresh child process so that its peak resident
memory is its own: load the model, one short warm-up forward, then the timed
forwards. The probe reads every layer and head, from the last token, onto
sentence-sized spans (32 tokens) covering the whole sequence. Eager attention
is measured only up to ``--eager-max`` tokens: it needs ~19 GB at 4K here and
does not fit at 8K.

    python benchmarks/probe.py [--lengths 1024 4096 8192] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def measure(method: str, length: int, repeats: int, backend: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from ragline.engine.lm.attention_probe import AttentionProbe
    from ragline.engine.lm.packaged import resolve_model_source

    torch.manual_seed(0)
    folder = resolve_model_source("SmolLM2-135M-Instruct")
    implementation = "eager" if method == "eager" else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=implementation).eval()
    probe = AttentionProbe(model, backend=backend)

    def forward(ids):
        with torch.inference_mode():
            if method == "plain":
                return model(input_ids=ids, use_cache=False, logits_to_keep=1)
            if method == "eager":
                return model(input_ids=ids, use_cache=False, logits_to_keep=1, output_attentions=True)
            spans = torch.arange(ids.shape[1]) // 32
            return probe.run(ids, spans)

    forward(torch.randint(100, 10_000, (1, 64)))
    resident_before = _peak_rss_mib()
    ids = torch.randint(100, 10_000, (1, length))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward(ids)
        seconds.append(time.perf_counter() - start)
    return {"method": method, "length": length, "seconds": statistics.median(seconds),
            "peak_rss_mib": _peak_rss_mib(), "rss_before_mib": resident_before}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(method: str, length: int, repeats: int, backend: str) -> dict:
    command = [sys.executable, __file__, "--child", method, str(length), "--repeats", str(repeats),
               "--backend", backend]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{method} at {length} tokens failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--eager-max", type=int, default=2048)
    parser.add_argument("--backend", default="torch", help="probe kernel: torch, triton or auto")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.repeats, args.backend)))
        return

    figures: dict[str, float] = {}
    print(f"{'tokens':>7} {'method':<7} {'seconds':>9} {'peak MiB':>9} {'time ×':>7} {'memory ×':>9}")
    for length in args.lengths:
        methods = ["plain", "probe"] + (["eager"] if length <= args.eager_max else [])
        results = {m: run_child(m, length, args.repeats, args.backend) for m in methods}
        plain = results["plain"]
        for method, r in results.items():
            time_ratio = r["seconds"] / plain["seconds"]
            memory_ratio = r["peak_rss_mib"] / plain["peak_rss_mib"]
            print(f"{length:>7} {method:<7} {r['seconds']:>9.2f} {r['peak_rss_mib']:>9.0f} "
                  f"{time_ratio:>7.2f} {memory_ratio:>9.2f}")
            figures[f"{method}_{length}_seconds"] = round(r["seconds"], 3)
            figures[f"{method}_{length}_peak_rss_mib"] = round(r["peak_rss_mib"], 1)
            if method != "plain":
                figures[f"{method}_{length}_time_ratio"] = round(time_ratio, 3)
                figures[f"{method}_{length}_memory_ratio"] = round(memory_ratio, 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
