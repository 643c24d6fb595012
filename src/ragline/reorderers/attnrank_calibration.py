"""Measuring an AttnRank profile: the generator's attention per passage slot,
averaged over real prompts.

Each calibration prompt holds N real HotpotQA paragraphs in random order —
the question's own (gold and distractors), topped up from other questions
when N exceeds ten — and the question, in exactly the prompt the generate
stage builds. The probe reads the attention the last prompt token pays to
each slot (layers and heads averaged; optionally per token), as a share of
what all slots receive; the profile is the mean share per slot.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ragline.engine.data.hotpotqa import HotpotQuestion, paragraph_passage
from ragline.engine.errors import InputError
from ragline.engine.lm.packaged import canonical_model_id
from ragline.engine.lm.prompts import PromptBuilder
from ragline.reorderers.attnrank import AttentionProfile
from ragline.reorderers.passage_attention import PassageAttention, template_fingerprint


def calibration_prompts(questions: Sequence[HotpotQuestion], slots: int, seed: int = 0):
    """(question text, N passages in random order) per question."""
    rng = random.Random(seed)
    pool = [p for q in questions for p in q.paragraphs]
    for question in questions:
        own = list(question.paragraphs)
        rng.shuffle(own)
        chosen = own[:slots]
        while len(chosen) < slots:  # top up from other questions' paragraphs
            extra = rng.choice(pool)
            if extra not in chosen:
                chosen.append(extra)
        rng.shuffle(chosen)
        yield question.question, [paragraph_passage(question.id, i, p) for i, p in enumerate(chosen)]


def calibrate(model, tokenizer, model_id: str, questions: Sequence[HotpotQuestion], slots: int,
              builder: PromptBuilder, per_token: bool = False, seed: int = 0, progress: bool = False,
              data_name: str = "") -> AttentionProfile:
    from tqdm import tqdm

    if slots < 1:
        raise InputError("--slots must be at least 1")
    if not questions:
        raise InputError("no calibration questions")
    reader = PassageAttention(model, tokenizer, builder)
    shares = np.stack([reader(text, passages, per_token)
                       for text, passages in tqdm(list(calibration_prompts(questions, slots, seed)),
                                                  desc="calibrating", unit="prompt", disable=not progress)])
    return AttentionProfile(
        model=canonical_model_id(model_id), slots=slots, template=template_fingerprint(tokenizer, builder),
        profile=shares.mean(axis=0).tolist(), spread=shares.std(axis=0).tolist(), per_token=per_token,
        calibration={"data": data_name, "prompts": len(shares), "seed": seed, "cite": builder.cite},
    )


def plot_profile(profile: AttentionProfile, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slots = np.arange(1, profile.slots + 1)
    mean, spread = np.asarray(profile.profile), np.asarray(profile.spread)
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(slots, mean, marker="o")
    axis.fill_between(slots, mean - spread, mean + spread, alpha=0.2)
    axis.set_xlabel("passage slot in the prompt")
    axis.set_ylabel("share of attention" + (" per token" if profile.per_token else ""))
    axis.set_title(f"{profile.model.split('/')[-1]}: last prompt token, {profile.calibration.get('prompts')} prompts")
    axis.set_xticks(slots)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
