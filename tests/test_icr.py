"""In-context reranking: scores against the model's own eager attention, the
calibration, the window, the stage (a permutation, two forwards per query,
YAML round trip) — on a tiny random Llama and on SmolLM2."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from ragline.engine.errors import ConfigError
from ragline.engine.index.docstore import query_over
from ragline.engine.pipeline import Pipeline
from ragline.engine.types import Passage
from ragline.rerankers.icr import ICRRerank
from ragline.rerankers.icr_prompt import CALIBRATION_QUERY, fit_to_window, icr_prompt
from ragline.rerankers.icr_scoring import InContextScorer, passage_scores

QUESTION = "Which river flows through Paris?"
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def passages() -> list[Passage]:
    texts = ["Paris is the capital of France.", "Bananas are yellow and sweet.", "The Seine flows through Paris.",
             "Mount Everest is the highest mountain.", "Tea is grown in India and China."]
    return [Passage(f"p{i}", f"d{i}", t, f"Title {i}") for i, t in enumerate(texts)]


def load_pair(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    sdpa = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    eager = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    return sdpa, eager, tokenizer


@pytest.fixture(scope="module")
def tiny(tiny_lm):
    return load_pair(tiny_lm)


def eager_scores(eager, tokenizer, question, candidates, calibrate=True, mask_outliers=True) -> np.ndarray:
    """The paper's code, on ``output_attentions`` weights: per layer the query
    rows' attention averaged over rows, summed over layers then heads, summed
    over each passage's tokens; minus the N/A read, its outlier tokens masked."""
    def per_token(text):
        prompt = icr_prompt(tokenizer, text, candidates)
        with torch.no_grad():
            layers = eager(torch.tensor([prompt.input_ids]), output_attentions=True).attentions
        weights = torch.stack([a[0][:, prompt.query_rows, :].mean(1) for a in layers]).sum(0).sum(0)
        return [weights[start:end] for start, end in prompt.passage_ranges]

    asked = per_token(question)
    if not calibrate:
        return np.array([float(t.sum()) for t in asked])
    scores = []
    for tokens, empty in zip(asked, per_token(CALIBRATION_QUERY)):
        calibrated = tokens - empty
        if mask_outliers:
            calibrated = calibrated * (calibrated > calibrated.mean() - 2 * calibrated.std())
        scores.append(float(calibrated.sum()))
    return np.array(scores)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("calibrate", [True, False])
def test_scores_equal_eager_attention_on_a_tiny_model(tiny, backend, calibrate):
    sdpa, eager, tokenizer = tiny
    scorer = InContextScorer(sdpa, tokenizer, backend=backend, calibrate=calibrate)
    scores, info = scorer(QUESTION, passages())
    assert info["forward_passes"] == (2 if calibrate else 1) and info["passage_tokens_cap"] is None
    expected = eager_scores(eager, tokenizer, QUESTION, passages(), calibrate)
    assert np.allclose(scores, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_scores_equal_eager_attention_on_smollm2(smollm2_folder):
    sdpa, eager, tokenizer = load_pair(smollm2_folder)
    scores, _ = InContextScorer(sdpa, tokenizer, backend="torch")(QUESTION, passages())
    assert np.allclose(scores, eager_scores(eager, tokenizer, QUESTION, passages()), atol=1e-4, rtol=1e-4)
    # A real model ranks the passage that answers first, once calibrated.
    assert int(np.argmax(scores)) == 2


def test_calibration_subtracts_the_content_free_read():
    read = np.array([0.5, 0.4, 0.3, 0.2, 0.9, 0.8])
    empty = np.array([0.1, 0.1, 0.1, 0.1, 0.2, 0.3])
    ranges = [(0, 4), (4, 6)]
    assert np.allclose(passage_scores(read, ranges), [1.4, 1.7])
    assert np.allclose(passage_scores(read, ranges, empty, mask_outliers=False), [1.0, 1.2])
    # One token the N/A query attends to far more than the question (a sink):
    # left out of its passage's sum when masking, as the paper's code does.
    read, empty = np.full(12, 0.2), np.full(12, 0.1)
    empty[5] = 3.0
    assert passage_scores(read, [(0, 12)], empty, mask_outliers=False)[0] == pytest.approx(11 * 0.1 - 2.8)
    assert passage_scores(read, [(0, 12)], empty)[0] == pytest.approx(11 * 0.1)


def test_calibrated_scores_are_the_questions_read_minus_the_na_read(tiny):
    sdpa, _, tokenizer = tiny
    plain = InContextScorer(sdpa, tokenizer, backend="torch", calibrate=False)
    calibrated = InContextScorer(sdpa, tokenizer, backend="torch", mask_outliers=False)
    expected = plain(QUESTION, passages())[0] - plain(CALIBRATION_QUERY, passages())[0]
    assert np.allclose(calibrated(QUESTION, passages())[0], expected, atol=1e-9)


def test_candidates_beyond_the_window_are_cut_evenly(tiny):
    _, _, tokenizer = tiny
    long = [Passage(f"p{i}", "d", " ".join(["word"] * (20 + 40 * i)), "T") for i in range(3)]
    lengths = [len(tokenizer(p.text, add_special_tokens=False)["input_ids"]) for p in long]
    full = max(len(icr_prompt(tokenizer, q, long).input_ids) for q in (QUESTION, CALIBRATION_QUERY))
    target = (lengths[0] + lengths[1]) // 2  # cut the two longer passages to this many tokens each
    window = full - (lengths[1] - target) - (lengths[2] - target)
    kept, cap = fit_to_window(tokenizer, QUESTION, long, window)
    assert abs(cap - target) <= 2
    assert max(len(icr_prompt(tokenizer, q, kept).input_ids) for q in (QUESTION, CALIBRATION_QUERY)) <= window
    assert kept[0] == long[0]  # the short passage stays whole; the long ones lose their tails, evenly
    for passage, cut in zip(long[1:], kept[1:]):
        assert passage.text.startswith(cut.text) and len(cut.text) < len(passage.text)
        assert len(tokenizer(cut.text, add_special_tokens=False)["input_ids"]) == cap
    assert fit_to_window(tokenizer, QUESTION, long, full) == (long, None)
    with pytest.raises(ConfigError, match="lower 'depth'"):
        fit_to_window(tokenizer, QUESTION, long, full - sum(lengths))


def test_stage_ranking_is_a_permutation_with_two_forwards_per_query(tiny_lm):
    stage = ICRRerank(model=tiny_lm, depth=5, top_k=5, backend="torch", device="cpu")
    stage.warm_up()
    calls = []
    handle = stage.scorer.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        queries = [query_over("q1", QUESTION, passages()), query_over("q2", "Where is tea grown?", passages()[::-1])]
        results = Pipeline([stage]).run(queries)
        assert len(calls) == 4  # two candidate sets: a question and an N/A forward each
        for result, query_passages in zip(results, (passages(), passages()[::-1])):
            assert sorted(h.id for h in result.ranking) == sorted(p.id for p in query_passages)
            assert [p.id for p in result.passages] == [h.id for h in result.ranking]
            assert [h.rank for h in result.ranking] == [1, 2, 3, 4, 5]
            assert [h.score for h in result.ranking] == sorted((h.score for h in result.ranking), reverse=True)
            assert result.trace[-1].extra["forward_passes"] == 2
        # The same candidate set again: its N/A read is reused.
        again = Pipeline([stage]).run([query_over("q3", "Is Everest high?", passages())])[0]
        assert len(calls) == 5 and again.trace[-1].extra["calibration_reused"] is True
    finally:
        handle.remove()

    top = Pipeline([ICRRerank(model=tiny_lm, depth=4, top_k=2, backend="torch", calibrate=False)]).run(
        [query_over("q", QUESTION, passages())])[0]
    assert len(top.ranking) == 2 and {h.id for h in top.ranking} <= {"p0", "p1", "p2", "p3"}


def test_stage_round_trips_through_yaml(tmp_path):
    stage = ICRRerank(model="smollm2-135m-instruct", depth=30, top_k=5, backend="torch", calibrate=False,
                      heads="heads.json")
    Pipeline([stage]).save(tmp_path / "p.yaml")
    loaded = Pipeline.load(tmp_path / "p.yaml").stages[0]
    assert isinstance(loaded, ICRRerank) and loaded.to_config() == stage.to_config()
    assert loaded.to_config() == {"model": "smollm2-135m-instruct", "depth": 30, "top_k": 5, "backend": "torch",
                                  "calibrate": False, "heads": "heads.json"}
    with pytest.raises(ConfigError, match="backend"):
        ICRRerank(backend="cuda")
    with pytest.raises(ConfigError, match="depth"):
        ICRRerank(depth=0)
