"""Passage spans in the generator's prompt, AttnRank profiles and placement,
and attention sorting — on a tiny random Llama with SmolLM2's tokenizer and
chat template."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ragline.engine.errors import ConfigError, InputError
from ragline.engine.index.docstore import query_over
from ragline.engine.lm.prompts import PromptBuilder
from ragline.engine.pipeline import Pipeline
from ragline.engine.types import Passage, Query
from ragline.reorderers.attnrank import AttentionProfile, AttnRank, basin_order


def five_passages() -> list[Passage]:
    texts = ["Paris is the capital of France.", "Bananas are yellow and sweet.", "The Seine is a river.",
             "Mount Everest is the highest mountain.", "Tea is grown in India and China."]
    return [Passage(f"p{i}", f"d{i}", t, f"Title {i}") for i, t in enumerate(texts)]


def query_with(passages) -> Query:
    return query_over("q", "What is the capital of France?", passages)


@pytest.fixture(scope="module")
def lm(tiny_lm):
    from ragline.engine.lm.causal_lm import load_causal_lm

    return load_causal_lm(tiny_lm, device="cpu", dtype="float32")


def test_passage_spans_cover_each_block_of_the_generators_own_prompt(tiny_lm, lm):
    from ragline.engine.lm.prompt_spans import passage_spans
    from ragline.generators.hf_backend import HFGenerator

    _, tokenizer = lm
    builder = PromptBuilder()
    passages = five_passages()
    ids, ranges = passage_spans(tokenizer, builder, "What is the capital of France?", passages)
    generator = HFGenerator(tiny_lm, device="cpu")
    assert ids == generator.prompt_ids(builder.messages("What is the capital of France?", passages))
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))
    for (start, end), passage in zip(ranges, passages):
        decoded = tokenizer.decode(ids[start:end])
        assert passage.title in decoded and passage.text in decoded


def test_calibration_profiles_round_trip_and_plot(tiny_lm, lm, hotpotqa_path, tmp_path):
    from ragline.engine.data.hotpotqa import read_hotpotqa
    from ragline.reorderers.attnrank_calibration import calibrate, plot_profile

    model, tokenizer = lm
    questions = read_hotpotqa(hotpotqa_path, limit=3)
    profile = calibrate(model, tokenizer, tiny_lm, questions, slots=12, builder=PromptBuilder())
    assert profile.slots == 12 and len(profile.profile) == 12  # more slots than a question has: topped up
    assert sum(profile.profile) == pytest.approx(1.0, abs=1e-6)
    assert profile.calibration["prompts"] == 3
    path = tmp_path / "profile.json"
    profile.save(path)
    assert AttentionProfile.load(path) == profile
    plot_profile(profile, tmp_path / "profile.png")
    assert (tmp_path / "profile.png").stat().st_size > 1000


def test_basin_order_puts_the_most_relevant_where_attention_is_highest():
    profile = np.array([0.30, 0.10, 0.05, 0.15, 0.40])
    assert basin_order(["a", "b", "c", "d", "e"], profile) == ["b", "d", "e", "c", "a"]
    interpolated = AttentionProfile("m", 2, "t", [0.8, 0.2], [0, 0]).for_slots(4)
    assert interpolated[0] == pytest.approx(0.8) and interpolated[-1] == pytest.approx(0.2)
    assert list(interpolated) == sorted(interpolated, reverse=True)


def make_profile(tiny_lm, lm, tmp_path, cite=True, slots=5, values=(0.3, 0.1, 0.05, 0.15, 0.4)) -> str:
    from ragline.reorderers.passage_attention import template_fingerprint

    _, tokenizer = lm
    profile = AttentionProfile(tiny_lm, slots, template_fingerprint(tokenizer, PromptBuilder(cite=cite)),
                               list(values), [0.0] * slots)
    path = tmp_path / f"profile-{cite}-{slots}.json"
    profile.save(path)
    return str(path)


def test_attnrank_stage_places_passages_by_the_profile(tiny_lm, lm, tmp_path):
    stage = AttnRank(make_profile(tiny_lm, lm, tmp_path), passages=5, model=tiny_lm)
    query = Pipeline([stage]).run([query_with(five_passages())])[0]
    # Relevance order p0..p4 into slots ranked 5, 1, 4, 2, 3 by attention.
    assert [p.id for p in query.passages] == ["p1", "p3", "p4", "p2", "p0"]
    assert [h.id for h in query.ranking] == ["p1", "p3", "p4", "p2", "p0"]
    assert AttnRank(**stage.to_config()).to_config() == stage.to_config()


def test_attnrank_refuses_a_profile_of_another_model_or_prompt(tiny_lm, lm, tmp_path):
    wrong_prompt = make_profile(tiny_lm, lm, tmp_path, cite=False)
    with pytest.raises(ConfigError, match="another prompt"):
        AttnRank(wrong_prompt, model=tiny_lm).warm_up()
    with pytest.raises(ConfigError, match="calibrate one for it"):
        AttnRank(make_profile(tiny_lm, lm, tmp_path), model="HuggingFaceTB/SmolLM2-360M-Instruct").warm_up()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "ragline-attnrank/1", "model": "m", "slots": 3, "template": "t",
                               "profile": [1.0], "spread": [0.0]}))
    with pytest.raises(InputError, match="1 values for 3 slots"):
        AttentionProfile.load(bad)


def test_attnrank_interpolates_a_profile_for_more_passages(tiny_lm, lm, tmp_path):
    stage = AttnRank(make_profile(tiny_lm, lm, tmp_path, slots=2, values=(0.9, 0.1)), passages=5, model=tiny_lm)
    query = Pipeline([stage]).run([query_with(five_passages())])[0]
    assert [p.id for p in query.passages] == ["p0", "p1", "p2", "p3", "p4"]  # a falling profile keeps the order
    assert query.trace[-1].extra["interpolated"] is True


def test_attention_sort_puts_the_most_attended_passage_last(tiny_lm, lm):
    from ragline.reorderers.attention_sort import AttentionSort
    from ragline.reorderers.passage_attention import PassageAttention

    model, tokenizer = lm
    passages = five_passages()
    attention = PassageAttention(model, tokenizer, PromptBuilder())("What is the capital of France?", passages)
    expected = [passages[i].id for i in np.argsort(attention, kind="stable")]

    stage = AttentionSort(model=tiny_lm, passages=5, rounds=1, device="cpu")
    query = Pipeline([stage]).run([query_with(passages)])[0]
    assert [p.id for p in query.passages] == expected
    assert query.trace[-1].extra["forward_passes"] == 1
    two_rounds = Pipeline([AttentionSort(model=tiny_lm, passages=5, rounds=2, device="cpu")]).run(
        [query_with(passages)])[0]
    assert sorted(p.id for p in two_rounds.passages) == sorted(p.id for p in passages)
    with pytest.raises(ConfigError, match="rounds"):
        AttentionSort(rounds=0)


def ragline(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "ragline.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_calibrate_command_writes_a_profile_and_its_plot(tiny_lm, hotpotqa_path, tmp_path):
    out = tmp_path / "profile.json"
    result = ragline("calibrate", "attnrank", "--model", tiny_lm, "--slots", 4, "--data", hotpotqa_path,
                     "--questions", 2, "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "calibrated" in result.stdout
    assert AttentionProfile.load(out).slots == 4
    assert out.with_suffix(".png").exists()
    missing = ragline("calibrate", "attnrank", "--model", tiny_lm, "--data", tmp_path / "nope.jsonl", "--out", out)
    assert missing.returncode != 0 and "nope.jsonl" in missing.stderr
