"""In-context reranking scores (Chen et al., "Attention in Large Language
Models Yields Efficient Zero-Shot Re-Rankers", ICLR 2025).

One probed forward of the ICR prompt reads, for every passage token, the
attention the query rows pay to it: summed over layers and heads, averaged
over the query rows. A second forward reads the same with the content-free
query "N/A": what the model pays a position and a passage whatever the
question (position bias, length, attention sinks). A passage's score is the
sum over its tokens of (question read − N/A read).

As the paper's code does by default (``masked_NA_calibration``), tokens whose
calibrated read is an outlier below the passage's own (mean − 2·sample
standard deviation) are left out of that sum: such tokens are those the
content-free query attends to far more than the question does (sinks,
separators), and one of them would otherwise outweigh the passage.
``mask_outliers=False`` gives the plain difference. Without calibration the
score is the summed question read, as the paper's ``query_last`` ablation.

The N/A read depends only on the passages (and the model), so it is kept per
candidate set: a set seen before costs one forward, not two.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from ragline.engine.errors import RaglineError
from ragline.engine.lm.attention_probe import AttentionProbe, ProbeResult
from ragline.engine.types import Passage
from ragline.rerankers.icr_prompt import CALIBRATION_QUERY, ICRPrompt, fit_to_window, icr_prompt

log = logging.getLogger(__name__)

# Candidate sets whose N/A read is kept (each a few KB).
CALIBRATION_CACHE_SIZE = 512


def token_reads(result: ProbeResult) -> np.ndarray:
    """(spans,) attention from the probed rows onto each span: summed over
    layers and heads (or over the chosen (layer, head) pairs), averaged over
    the probed rows."""
    return result.attention[:, 0].sum(dim=(0, 1)).mean(dim=0).double().cpu().numpy()


def passage_scores(read: np.ndarray, ranges: Sequence[tuple[int, int]], calibration: np.ndarray | None = None,
                   mask_outliers: bool = True) -> np.ndarray:
    """One score per passage from per-token reads; ``ranges`` index ``read``
    (and ``calibration``, the content-free read of the same tokens)."""
    scores = np.zeros(len(ranges))
    for i, (start, end) in enumerate(ranges):
        tokens = read[start:end]
        if calibration is None:
            scores[i] = tokens.sum()
            continue
        calibrated = tokens - calibration[start:end]
        if mask_outliers and len(calibrated) > 1:
            # The paper's code keeps tokens above mean − 2σ (torch.std: the sample deviation).
            threshold = calibrated.mean() - 2 * calibrated.std(ddof=1)
            calibrated = calibrated[calibrated >= threshold]
        scores[i] = calibrated.sum()
    return scores


class InContextScorer:
    """Scores a question's candidate passages with a language model's attention."""

    def __init__(self, model, tokenizer, backend: str = "auto", heads: Sequence[tuple[int, int]] | None = None,
                 calibrate: bool = True, mask_outliers: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.probe = AttentionProbe(model, backend=backend)
        self.heads = [tuple(pair) for pair in heads] if heads else None
        self.calibrate = calibrate
        self.mask_outliers = mask_outliers
        self.window = int(getattr(model.config, "max_position_embeddings", 0) or tokenizer.model_max_length)
        self._calibration: OrderedDict[str, np.ndarray] = OrderedDict()

    def __call__(self, question: str, passages: Sequence[Passage]) -> tuple[np.ndarray, dict]:
        """(one score per passage, what it cost: forwards, calibration reuse, cut)."""
        if not passages:
            return np.zeros(0), {"forward_passes": 0}
        passages, cap = fit_to_window(self.tokenizer, question, passages, self.window)
        prompt = icr_prompt(self.tokenizer, question, passages)
        read = self.read(prompt)
        info = {"forward_passes": 1, "passage_tokens_cap": cap}
        calibration = None
        if self.calibrate:
            key = _candidate_key(passages)
            calibration = self._calibration.get(key)
            info["calibration_reused"] = calibration is not None
            if calibration is None:
                calibration = self._calibration_read(prompt, passages)
                info["forward_passes"] += 1
                self._calibration[key] = calibration
                while len(self._calibration) > CALIBRATION_CACHE_SIZE:
                    self._calibration.popitem(last=False)
            else:
                self._calibration.move_to_end(key)
        return passage_scores(read, _relative(prompt.passage_ranges), calibration, self.mask_outliers), info

    def _calibration_read(self, prompt: ICRPrompt, passages: Sequence[Passage]) -> np.ndarray:
        empty = icr_prompt(self.tokenizer, CALIBRATION_QUERY, passages)
        # The passages precede the query, so both prompts hold them as the same tokens.
        if empty.passage_ranges != prompt.passage_ranges or not _same_passage_tokens(empty, prompt):
            raise RaglineError("the calibration prompt tokenises the passages differently from the question's")
        return self.read(empty)

    def read(self, prompt: ICRPrompt) -> np.ndarray:
        """Per passage token (in prompt order), the attention of the query rows."""
        span_ids = torch.full((len(prompt.input_ids),), -1, dtype=torch.long)
        tokens = torch.cat([torch.arange(start, end) for start, end in prompt.passage_ranges])
        span_ids[tokens] = torch.arange(len(tokens))
        result = self.probe.run(torch.tensor([prompt.input_ids]), span_ids, num_spans=len(tokens),
                                query_positions=prompt.query_rows, heads=self.heads)
        return token_reads(result)


def _relative(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Passage ranges in the prompt → ranges in the concatenated passage tokens."""
    out, cursor = [], 0
    for start, end in ranges:
        out.append((cursor, cursor + end - start))
        cursor += end - start
    return out


def _same_passage_tokens(a: ICRPrompt, b: ICRPrompt) -> bool:
    return all(a.input_ids[s:e] == b.input_ids[s:e] for s, e in a.passage_ranges)


def _candidate_key(passages: Sequence[Passage]) -> str:
    digest = hashlib.sha1()
    for passage in passages:
        digest.update("\x1f".join((passage.id, passage.title, passage.text)).encode() + b"\x1e")
    return digest.hexdigest()
