"""``ragline train cross-encoder`` and ``ragline calibrate heads``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer


def train_cross_encoder_command(
    data: Annotated[Path, typer.Option("--data", help="HotpotQA JSONL, or a qrels file (with --topics and --index).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the model to (sentence-transformers format).")],
    base: Annotated[str, typer.Option("--base", help="Encoder to start from: hub id, folder, or a packaged model.")] = "all-MiniLM-L6-v2",
    topics: Annotated[Optional[Path], typer.Option("--topics", help="Queries for qrels training (TREC, BEIR jsonl, tsv).")] = None,
    index: Annotated[Optional[Path], typer.Option("--index", help="Index with BM25 over the qrels' corpus, or over HotpotQA's paragraphs (ragline convert hotpotqa-corpus): hard negatives.")] = None,
    negatives: Annotated[int, typer.Option(min=0, help="BM25 hard negatives per query (with --index).")] = 8,
    holdout: Annotated[float, typer.Option(help="HotpotQA: fraction of questions left out of training (split by question id; 0 = none).")] = 0.0,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Train on at most this many queries (a seeded random choice).")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the pairs.")] = 1,
    batch_size: Annotated[int, typer.Option(min=1, help="Pairs per step.")] = 16,
    lr: Annotated[float, typer.Option(help="Peak learning rate (linear warm-up and decay).")] = 3e-5,
    max_length: Annotated[int, typer.Option(min=8, help="Tokens per (query, passage) pair.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed for the split, shuffling and the new head.")] = 0,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, ... (default: cuda when present).")] = None,
) -> None:
    """Fine-tune a cross-encoder on labelled pairs: HotpotQA gold vs distractor
    paragraphs (and BM25 hard negatives, given --index), or qrels with BM25
    hard negatives."""
    import random

    from ragline.engine import terminal
    from ragline.engine.errors import InputError
    from ragline.rerankers.cross_encoder_training import TrainingSettings, query_groups, train_cross_encoder

    if topics is not None and index is None:
        raise InputError("qrels training needs both --topics and --index")
    pairs = (_qrels_pairs(data, topics, index, negatives) if topics
             else _hotpotqa_pairs(data, holdout, seed, index, negatives))
    if limit:
        groups = query_groups(pairs)
        random.Random(seed).shuffle(groups)
        pairs = [pair for group in groups[:limit] for pair in group]
    settings = TrainingSettings(epochs=epochs, batch_size=batch_size, learning_rate=lr, max_length=max_length, seed=seed)
    summary = train_cross_encoder(pairs, base, out, settings, device=device, progress=sys.stderr.isatty())
    terminal.stdout().print(f"[green]trained[/] {out}: {summary['queries']:,} queries, {summary['pairs']:,} pairs "
                  f"({summary['positives']:,} relevant), "
                  f"{summary['steps']} steps, loss {summary['first_loss']:.3f} → {summary['last_loss']:.3f}")


def _hotpotqa_pairs(data: Path, holdout: float, seed: int, index: Path | None, negatives: int):
    from ragline.engine.data.hotpotqa import read_hotpotqa, split_by_question
    from ragline.rerankers.cross_encoder_training import hotpotqa_hard_negatives, pairs_from_hotpotqa

    questions = read_hotpotqa(data)
    if holdout:
        questions, _ = split_by_question(questions, holdout, seed)
    pairs = pairs_from_hotpotqa(questions)
    if index is not None and negatives:
        pairs += hotpotqa_hard_negatives(questions, index, negatives)
    return pairs


def _qrels_pairs(data: Path, topics: Path, index: Path, negatives: int):
    from ragline.engine.data.topics import read_qrels, read_topics
    from ragline.rerankers.cross_encoder_training import pairs_from_qrels

    return pairs_from_qrels(read_qrels(data), read_topics(topics), index, negatives=negatives)


def calibrate_heads_command(
    out: Annotated[Path, typer.Option("--out", help="Profile file to write (JSON).")],
    corpus: Annotated[Path, typer.Option("--corpus", help="Real text for the haystacks and needles: a corpus file or folder (JSONL, TREC, BEIR, text files).")],
    model: Annotated[str, typer.Option("--model", help="The model: hub id, folder, or a packaged model.")] = "SmolLM2-135M-Instruct",
    samples: Annotated[int, typer.Option("--samples", min=1, help="Needle-in-a-haystack tasks.")] = 20,
    min_tokens: Annotated[int, typer.Option("--min-tokens", min=1, help="Shortest haystack, in tokens.")] = 500,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Longest haystack, in tokens.")] = 1500,
    top: Annotated[int, typer.Option("--top", min=1, help="Heads to choose: the highest retrieval scores.")] = 16,
    min_recall: Annotated[float, typer.Option("--min-recall", help="A task counts when the answer has this ROUGE-1 recall of the needle.")] = 0.5,
    documents: Annotated[int, typer.Option("--documents", min=1, help="Read at most this many corpus documents.")] = 5000,
    seed: Annotated[int, typer.Option(help="Seed of needles, haystacks and depths.")] = 0,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, ... (default: cuda when present).")] = None,
) -> None:
    """Find the model's retrieval heads (needle-in-a-haystack copying), for `icr` with `heads:`."""
    import itertools

    from ragline.engine import terminal
    from ragline.engine.data.corpus import read_corpus
    from ragline.engine.lm.causal_lm import load_causal_lm
    from ragline.rerankers.retrieval_head_detection import detect_retrieval_heads

    texts = [doc.text for doc in itertools.islice(read_corpus(corpus), documents)]
    lm, tokenizer = load_causal_lm(model, device=device, dtype="float32")
    profile = detect_retrieval_heads(lm, tokenizer, model, texts, samples, min_tokens, max_tokens, top, min_recall,
                                     seed, progress=sys.stderr.isatty(), corpus_name=corpus.name)
    profile.save(out)
    best = ", ".join(f"{layer}.{head} ({profile.scores[layer][head]:.2f})" for layer, head in profile.top[:5])
    terminal.stdout().print(f"[green]calibrated[/] {out}: {profile.settings['answered']} of {samples} needles copied; "
                            f"top heads (layer.head) {best}")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    groups["train"].command("cross-encoder")(train_cross_encoder_command)
    groups["calibrate"].command("heads")(calibrate_heads_command)
