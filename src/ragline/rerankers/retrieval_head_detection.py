"""Finding a model's retrieval heads (Wu et al., 2024): the heads that, while
the model copies text from its context, look at the very token being copied.

Each detection task is a needle in a haystack built from real corpus text:
a sentence of one document, announced as 'The special magic sentence is:
"..."', is inserted at a paragraph break at some depth of other documents,
and the model is asked to repeat it. The model answers greedily. At each
generated token, a head "retrieves" when its most attended position is a
token of the needle sentence equal to the token just generated. As in the
paper's code, a task gives each head (copies found) / (needle tokens), and
only tasks the model answered (ROUGE-1 recall of the sentence ≥
``min_recall``, 0.5 as in the paper) count; a head's retrieval score is its
mean over those tasks.

The attention rows come from one probed forward over the prompt and the
generated answer (querying the positions that produced each answer token):
causal attention makes them the rows incremental decoding saw, without
``output_attentions``. The probe reads every position as a span of its own.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ragline.engine.errors import InputError, RaglineError
from ragline.engine.lm.attention_probe import AttentionProbe
from ragline.engine.lm.packaged import canonical_model_id
from ragline.engine.lm.prompt_spans import prompt_text
from ragline.rerankers.retrieval_heads import RetrievalHeads

log = logging.getLogger(__name__)

NEEDLE = 'The special magic sentence is: "{sentence}"'
QUESTION = "What is the special magic sentence? Repeat it word for word."
# Needle sentences: long enough to be copied token by token, short enough to fit any answer.
NEEDLE_WORDS = (8, 40)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class NeedleTask:
    prompt_ids: list[int]
    needle: tuple[int, int]  # half-open token range of the needle sentence in the prompt
    sentence: str


def needle_tasks(tokenizer, documents: Sequence[str], samples: int, min_tokens: int, max_tokens: int,
                 seed: int = 0) -> Iterator[NeedleTask]:
    """``samples`` tasks, haystacks from ``min_tokens`` to ``max_tokens``
    tokens (evenly spaced), needle depths drawn uniformly."""
    rng = random.Random(seed)
    sentences = [(index, sentence) for index, text in enumerate(documents) for sentence in _SENTENCE_END.split(text)
                 if NEEDLE_WORDS[0] <= len(sentence.split()) <= NEEDLE_WORDS[1]]
    if not sentences:
        raise InputError(f"the corpus has no sentence of {NEEDLE_WORDS[0]}–{NEEDLE_WORDS[1]} words to use as a needle")
    lengths = np.linspace(min_tokens, max_tokens, samples).round().astype(int) if samples > 1 else [max_tokens]
    for length in lengths:
        source, sentence = rng.choice(sentences)
        paragraphs = _haystack(tokenizer, documents, int(length), exclude=source, rng=rng)
        needle = NEEDLE.format(sentence=sentence)
        paragraphs.insert(rng.randint(0, len(paragraphs)), needle)
        yield _task(tokenizer, "\n\n".join(paragraphs), needle, sentence)


def _haystack(tokenizer, documents: Sequence[str], length: int, exclude: int, rng: random.Random) -> list[str]:
    """Whole documents in random order, about ``length`` tokens in all (the
    last one cut at a sentence end)."""
    order = [i for i in range(len(documents)) if i != exclude]
    rng.shuffle(order)
    paragraphs, total = [], 0
    for index in order:
        text = " ".join(documents[index].split())
        if not text:
            continue
        tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if total + tokens > length:
            kept = ""
            for sentence in _SENTENCE_END.split(text):  # the longest prefix of whole sentences that fits
                candidate = f"{kept} {sentence}".strip()
                if total + len(tokenizer(candidate, add_special_tokens=False)["input_ids"]) > length:
                    break
                kept = candidate
            if kept:
                paragraphs.append(kept)
            break
        paragraphs.append(text)
        total += tokens
    if not paragraphs:
        raise InputError("the corpus has too little text for a haystack")
    return paragraphs


def _task(tokenizer, haystack: str, needle: str, sentence: str) -> NeedleTask:
    text = prompt_text(tokenizer, [{"role": "user", "content": f"{haystack}\n\n{QUESTION}"}])
    encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=not tokenizer.chat_template)
    offsets = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    start = text.index(needle) + needle.index(sentence)
    end = start + len(sentence)
    tokens = np.flatnonzero((offsets[:, 1] > start) & (offsets[:, 0] < end))
    return NeedleTask(list(encoded["input_ids"]), (int(tokens[0]), int(tokens[-1]) + 1), sentence)


def retrieval_hits(top_positions: torch.Tensor, generated: torch.Tensor, prompt_ids: torch.Tensor,
                   needle: tuple[int, int]) -> torch.Tensor:
    """(layers, heads) retrieval score of one task. ``top_positions`` (layers,
    heads, steps): each head's most attended position while generating each
    answer token; ``generated`` (steps,): those tokens."""
    start, end = needle
    inside = (top_positions >= start) & (top_positions < end)
    copied = prompt_ids[top_positions.clamp(max=len(prompt_ids) - 1)] == generated
    return (inside & copied).sum(dim=-1).double() / (end - start)


def copy_recall(answer: str, sentence: str) -> float:
    """ROUGE-1 recall of ``sentence`` in ``answer`` (lower-cased words)."""
    reference = Counter(_WORD.findall(sentence.lower()))
    found = Counter(_WORD.findall(answer.lower()))
    return sum(min(n, found[w]) for w, n in reference.items()) / max(sum(reference.values()), 1)


class HeadDetector:
    """Runs needle tasks through a model and accumulates per-head scores."""

    def __init__(self, model, tokenizer, backend: str = "auto", min_recall: float = 0.5):
        self.model = model
        self.tokenizer = tokenizer
        self.probe = AttentionProbe(model, backend=backend)
        self.min_recall = min_recall

    def score(self, task: NeedleTask) -> torch.Tensor | None:
        """(layers, heads) scores of one task, or None when the model did not copy the needle."""
        prompt = torch.tensor([task.prompt_ids], device=self.model.device)
        needle_tokens = task.needle[1] - task.needle[0]
        with torch.inference_mode():
            output = self.model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                         max_new_tokens=needle_tokens + 24, pad_token_id=self.tokenizer.pad_token_id
                                         or self.tokenizer.eos_token_id)
        generated = output[0, prompt.shape[1]:]
        answer = self.tokenizer.decode(generated, skip_special_tokens=True)
        recall = copy_recall(answer, task.sentence)
        log.debug("needle answer (recall %.2f): %r", recall, answer)
        if recall < self.min_recall or len(generated) == 0:
            return None
        # Answer token i was produced by the position before it: the prompt's
        # last token, then each answer token but the last.
        sequence = output[:, :-1]
        length = sequence.shape[1]
        positions = list(range(prompt.shape[1] - 1, length))
        result = self.probe.run(sequence, torch.arange(length), num_spans=length, query_positions=positions)
        top = result.attention[:, 0].argmax(dim=-1)  # (layers, heads, steps)
        return retrieval_hits(top, generated.to(top.device), sequence[0], task.needle).cpu()


def detect_retrieval_heads(model, tokenizer, model_id: str, documents: Sequence[str], samples: int = 20,
                           min_tokens: int = 500, max_tokens: int = 1500, top: int = 16, min_recall: float = 0.5,
                           seed: int = 0, backend: str = "auto", progress: bool = False,
                           corpus_name: str = "") -> RetrievalHeads:
    if samples < 1 or top < 1 or not 0 < min_tokens <= max_tokens:
        raise InputError("--samples and --top must be at least 1, and 0 < --min-tokens ≤ --max-tokens")
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    top = min(top, layers * heads)
    detector = HeadDetector(model, tokenizer, backend, min_recall)
    per_task = []
    with _progress(progress, samples) as advance:
        for task in needle_tasks(tokenizer, documents, samples, min_tokens, max_tokens, seed):
            scores = detector.score(task)
            if scores is not None:
                per_task.append(scores)
            advance()
    if not per_task:
        raise RaglineError(f"the model copied none of the {samples} needles (ROUGE-1 recall ≥ {min_recall}): "
                           "no retrieval score can be measured; try shorter haystacks (--max-tokens)")
    mean = torch.stack(per_task).mean(dim=0)
    ranked = torch.argsort(mean.flatten(), descending=True, stable=True)[:top]
    chosen = [[int(i) // heads, int(i) % heads] for i in ranked]
    settings = {"samples": samples, "answered": len(per_task), "min_tokens": min_tokens, "max_tokens": max_tokens,
                "top": top, "min_recall": min_recall, "seed": seed, "corpus": corpus_name,
                "needle": NEEDLE, "question": QUESTION}
    log.info("retrieval heads: %d of %d needle tasks answered; top head %s scores %.3f",
             len(per_task), samples, chosen[0], float(mean.flatten()[ranked[0]]))
    return RetrievalHeads(canonical_model_id(model_id), layers, heads, mean.tolist(), chosen, settings)


@contextlib.contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[], None]]:
    """A bar with the time left on stderr while the tasks run; yields ``advance()``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ragline.engine import terminal

    columns = (TextColumn("needle tasks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=terminal.stderr(), disable=not enabled, transient=True) as bar:
        task = bar.add_task("detect", total=total)
        yield lambda: bar.advance(task)
