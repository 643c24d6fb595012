"""The command line as a user runs it: every figure is a separate `ragline`
process, timed from its start to its exit (imports, model load, disk caches
included), the way a shell runs it.

The corpus: HotpotQA's paragraphs, consecutive ones joined into passages of
about 250 words (the size of a RAG chunk, ~290 tokens); a BM25 index of it.
A question retrieves 20 of them (~5,800 tokens for the generator).

- ``ragline --help``: wall.
- ``ragline query IDX Q --retriever bm25``: wall.
- ``ragline ask IDX Q --pipeline P --json``, the generator on SmolLM2-135M
  (8 new tokens): ``kv_reuse: full`` (a full prefill); then ``kv_reuse:
  block`` with a disk cache folder, twice — cold (an empty folder: every
  passage prefilled and written) and warm (a second process reading what the
  first wrote). Time to first token from the answer's trace, and wall.
- ``--contended``: the full and warm asks again with one other CPU-bound
  process running (torch matrix products on two threads), as on any shared
  server.

Ratios are of figures measured side by side in this run; the load average
is printed with every timing. Progress and an ETA go to stderr; the last
line is one JSON object of every figure.

    python benchmarks/user_paths.py [--repeats 3] [--contended] [--quick] [--model qwen2.5-coder-1.5b]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOTPOTQA = ROOT.parent / "shared" / "data" / "hotpotqa-distractor.jsonl"
RAGLINE = [sys.executable, "-m", "ragline.cli"]
PASSAGE_WORDS = 250
PASSAGES = 20
WALL_SAMPLES = 5  # --help and query runs at least (cheap, and short enough for one sample to be noise)
BUSY = ("import torch\ntorch.set_num_threads(2)\na = torch.randn(768, 768)\n"
        "while True:\n    a = torch.tanh(a @ a)\n")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def write_corpus(path: Path) -> list[str]:
    """The passages, and the questions (in file order)."""
    questions, seen = [], set()
    with open(HOTPOTQA, encoding="utf-8") as source, open(path, "w", encoding="utf-8") as out:
        n = 0
        for line in source:
            record = json.loads(line)
            questions.append(record["question"])
            words: list[str] = []
            for title, sentences in record["context"]:
                if title in seen:
                    continue
                seen.add(title)
                words += f"{title}. {' '.join(sentences)}".split()
                while len(words) >= PASSAGE_WORDS:
                    out.write(json.dumps({"id": f"p{n}", "text": " ".join(words[:PASSAGE_WORDS])}) + "\n")
                    words, n = words[PASSAGE_WORDS:], n + 1
    return questions


def timed(args: list, cwd: Path, env: dict | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([*RAGLINE, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=1800)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"`ragline {' '.join(map(str, args))}` failed (exit {done.returncode}):\n{done.stderr}")
    return took, done.stdout


def pipeline_file(folder: Path, name: str, kv_reuse: str, cache: Path | None, model: str | None) -> Path:
    options = f", kv_options: {{directory: {cache}}}" if cache else ""
    model_setting = f"model: {model}, " if model else ""
    path = folder / f"{name}.yaml"
    path.write_text(f"stages:\n  - bm25: {{k: {PASSAGES}}}\n"
                    f"  - generate: {{{model_setting}passages: {PASSAGES}, max_new_tokens: 8, kv_reuse: {kv_reuse}{options}}}\n")
    return path



def ask(index: Path, question: str, pipeline: Path, work: Path) -> dict:
    wall, stdout = timed(["ask", index, question, "--pipeline", pipeline, "--json"], work)
    result = json.loads(stdout)
    generate = next(step for step in result["trace"] if step.get("stage") == "generate")
    return {"ttft_s": round(generate["ttft"], 3), "wall_s": round(wall, 2), "load_average": load(),
            "prefilled_tokens": generate.get("prefilled_tokens"), "cached_tokens": generate.get("cached_tokens"),
            "disk_hits": generate.get("disk_hits"), "misses": generate.get("misses")}


def median(runs: list[dict], key: str) -> float:
    return round(statistics.median(run[key] for run in runs), 3)


def asks(index: Path, questions: list[str], work: Path, repeats: int, tag: str, progress, model: str | None) -> dict:
    """Full prefill against a warm cache, per question: full, then block cold, then block warm."""
    full, cold, warm = [], [], []
    for n, question in enumerate(questions[:repeats]):
        cache = work / f"kv-{tag}-{n}"
        shutil.rmtree(cache, ignore_errors=True)
        full_pipeline = pipeline_file(work, "full", "full", None, model)
        block_pipeline = pipeline_file(work, f"block-{tag}-{n}", "block", cache, model)
        progress(f"{tag}: full prefill, question {n + 1}")
        full.append(ask(index, question, full_pipeline, work))
        progress(f"{tag}: block reuse, cold cache, question {n + 1}")
        cold.append(ask(index, question, block_pipeline, work))
        progress(f"{tag}: block reuse, warm cache, question {n + 1}")
        warm.append(ask(index, question, block_pipeline, work))
        say(f"    full {full[-1]['ttft_s']} s, cold {cold[-1]['ttft_s']} s, warm {warm[-1]['ttft_s']} s to first token; "
            f"warm wall {warm[-1]['wall_s']} s (load average {warm[-1]['load_average']})")
        shutil.rmtree(cache, ignore_errors=True)
    figures = {"runs": {"full": full, "cold": cold, "warm": warm}}
    for name, runs in (("full", full), ("cold", cold), ("warm", warm)):
        figures[f"{name}_ttft_s"] = median(runs, "ttft_s")
        figures[f"{name}_wall_s"] = median(runs, "wall_s")
    figures["warm_ttft_speedup"] = round(statistics.median(f["ttft_s"] / w["ttft_s"] for f, w in zip(full, warm)), 2)
    figures["cold_over_full_ttft"] = round(statistics.median(c["ttft_s"] / f["ttft_s"] for f, c in zip(full, cold)), 2)
    return figures


class Progress:
    def __init__(self, steps: int):
        self.steps, self.done, self.started = steps, 0, time.perf_counter()

    def __call__(self, what: str) -> None:
        elapsed = time.perf_counter() - self.started
        eta = "–" if not self.done else f"{elapsed / self.done * (self.steps - self.done):.0f} s"
        self.done += 1
        say(f"[{self.done}/{self.steps}] {what}  (elapsed {elapsed:.0f} s, ETA {eta}, load average {load()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="questions asked (each: full, cold, warm)")
    parser.add_argument("--contended", action="store_true", help="also with one other CPU-bound process running")
    parser.add_argument("--quick", action="store_true", help="one question, for make bench-check")
    parser.add_argument("--model", default=None, help="the generator (default: the generate stage's, SmolLM2-135M-Instruct)")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    work = Path(tempfile.mkdtemp(prefix="ragline-user-paths-"))
    try:
        questions = write_corpus(work / "corpus.jsonl")
        say(f"indexing the corpus (BM25), load average {load()}")
        timed(["index", work / "corpus.jsonl", "--out", work / "idx", "--bm25"], work)
        index = work / "idx"
        question = questions[0]
        steps = 2 * max(repeats, WALL_SAMPLES) + 3 * repeats * (2 if args.contended else 1)
        progress = Progress(steps)
        figures: dict = {"cpu_cores": os.cpu_count(), "passages": PASSAGES, "passage_words": PASSAGE_WORDS,
                         "model": f"{args.model or 'SmolLM2-135M-Instruct'} (fp32)", "new_tokens": 8, "load_average_start": load()}
        walls: dict[str, list[float]] = {"help": [], "query": []}
        for _ in range(max(repeats, WALL_SAMPLES)):
            progress("ragline --help")
            walls["help"].append(timed(["--help"], work)[0])
            progress("ragline query (BM25)")
            walls["query"].append(timed(["query", index, question, "--retriever", "bm25", "--k", "10"], work)[0])
        figures["help_wall_s"] = round(statistics.median(walls["help"]), 3)
        figures["query_wall_s"] = round(statistics.median(walls["query"]), 3)
        say(f"    --help {figures['help_wall_s']} s, BM25 query {figures['query_wall_s']} s (load average {load()})")
        figures["quiet"] = asks(index, questions, work, repeats, "quiet", progress, args.model)
        figures["warm_ask_over_query_wall"] = round(figures["quiet"]["warm_wall_s"] / figures["query_wall_s"], 2)
        if args.contended:
            busy = subprocess.Popen([sys.executable, "-c", BUSY])
            try:
                time.sleep(3)
                figures["contended"] = asks(index, questions, work, repeats, "contended", progress, args.model)
            finally:
                busy.kill()
                busy.wait()
        figures["load_average_end"] = load()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for part in ("quiet", "contended"):
        if part in figures:
            runs = figures[part].pop("runs")
            figures[part]["load_averages"] = [run["load_average"] for kind in runs.values() for run in kind]
            figures[part]["warm_disk_hits"] = [run["disk_hits"] for run in runs["warm"]]
            figures[part]["cached_tokens"] = runs["warm"][0]["cached_tokens"]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
