"""Sentence splitting, budgeted selection, and the compressors end to end
(on a tiny random Llama with SmolLM2's tokenizer, so they run in seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ragline.compressors.baselines import EmbeddingSentences, LeadingSentences, RandomSentences
from ragline.compressors.sentences import sentence_units, split_sentences
from ragline.engine.errors import ConfigError, InputError
from ragline.engine.index.docstore import query_over
from ragline.engine.pipeline import Pipeline
from ragline.engine.types import Passage, Query


def sentences_of(text: str) -> list[str]:
    return [text[s:e] for s, e in split_sentences(text)]


def test_sentences_keep_offsets_and_survive_abbreviations_and_initials():
    text = ("J. R. R. Tolkien wrote it. Dr. Smith moved to the U.S. Army in 1942!  Was it Mt. Hood? "
            "\"Yes,\" she said.\n\nA new paragraph")
    assert sentences_of(text) == [
        "J. R. R. Tolkien wrote it.",
        "Dr. Smith moved to the U.S. Army in 1942!",
        "Was it Mt. Hood?",
        "\"Yes,\" she said.",
        "A new paragraph",
    ]
    assert split_sentences("") == [] and split_sentences("   ") == []


def passages() -> list[Passage]:
    return [
        Passage("p1", "d1", "Paris is the capital of France. It has many museums. The Seine flows through it.", "Paris"),
        Passage("p2", "d2", "Bananas are yellow. Monkeys like bananas.", "Bananas"),
    ]


def query_with(passage_list) -> Query:
    return query_over("q1", "What is the capital of France?", passage_list)


def test_selection_is_greedy_within_the_budget_and_keeps_original_order():
    leading = LeadingSentences(budget=0)
    lengths = [10, 30, 5, 8]
    scores = [0.1, 0.9, 0.8, 0.7]
    leading.budget = 20
    assert leading.select(scores, lengths) == [2, 3]  # 30 does not fit; 5 and 8 do
    leading.budget = 100
    assert leading.select(scores, lengths) == [0, 1, 2, 3]
    assert leading.select([0.5, float("-inf")], [1, 1]) == [0]  # -inf is never kept
    with pytest.raises(ConfigError, match="one of ratio, budget or threshold"):
        LeadingSentences(ratio=0.5, budget=10)
    with pytest.raises(ConfigError, match="ratio: input should be less than or equal to 1"):
        LeadingSentences(ratio=2.0)


def test_leading_sentences_keep_the_start_and_the_passage_numbers():
    query = Pipeline([LeadingSentences(ratio=0.4)]).run([query_with(passages())])[0]
    assert query.context.startswith("[1] Paris\nParis is the capital of France.")
    assert "Monkeys" not in query.context
    note = query.trace[-1].extra
    assert note["kept"] < note["sentences"] == 5
    assert note["tokens_after"] <= 0.4 * note["tokens_before"]


def test_random_sentences_are_reproducible_per_question():
    first = Pipeline([RandomSentences(ratio=0.5, seed=3)]).run([query_with(passages())])[0].context
    again = Pipeline([RandomSentences(ratio=0.5, seed=3)]).run([query_with(passages())])[0].context
    assert first == again


@pytest.mark.slow
def test_embedding_sentences_keep_the_answering_sentence():
    query = Pipeline([EmbeddingSentences(budget=12)]).run([query_with(passages())])[0]
    assert "Paris is the capital of France." in query.context
    assert "Bananas" not in query.context


def test_an_empty_context_compresses_to_nothing():
    empty = [Passage("p", "d", "   ", "Empty")]
    query = Pipeline([LeadingSentences(ratio=0.5)]).run([query_with(empty)])[0]
    assert query.context == ""
    assert sentence_units(empty) == []


# -- the attention compressors, on a tiny random model ---------------------------------------------

@pytest.fixture()
def sentinel_probe_file(tiny_lm, tmp_path):
    from ragline.compressors.sentinel import SentinelProbe

    layers, heads = 2, 4
    rng = np.random.default_rng(0)
    probe = SentinelProbe(proxy=tiny_lm, layers=layers, heads=heads, mean=[0.0] * 8, scale=[1.0] * 8,
                          coef=rng.normal(size=8).tolist(), intercept=0.0)
    path = tmp_path / "probe.json"
    probe.save(path)
    return path


def test_sentinel_with_a_probe_selects_within_budget(tiny_lm, sentinel_probe_file):
    from ragline.compressors.sentinel import Sentinel

    stage = Sentinel(probe=str(sentinel_probe_file), ratio=0.5, device="cpu", tokenizer=tiny_lm)
    query = Pipeline([stage]).run([query_with(passages())])[0]
    note = query.trace[-1].extra
    assert 0 < note["kept"] < note["sentences"]
    assert note["tokens_after"] <= 0.5 * note["tokens_before"]
    scores = stage.score_units(query.text, query.passages, sentence_units(query.passages))
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert Sentinel(**stage.to_config()).to_config() == stage.to_config()


def test_sentinel_chunks_a_context_longer_than_the_proxy_window(tiny_lm):
    from ragline.compressors.sentinel import Sentinel

    # tiny_lm has a 256-position window; this context is ~1,000 tokens.
    long = [Passage(f"p{i}", f"d{i}", " ".join(f"Fact number {i}-{j} is about topic {j}." for j in range(12)), f"T{i}")
            for i in range(8)]
    stage = Sentinel(ratio=0.3, device="cpu", tokenizer=tiny_lm, proxy=tiny_lm)
    query = Pipeline([stage]).run([query_with(long)])[0]
    assert query.trace[-1].extra["sentences"] == 96
    assert query.context


def test_sentinel_probe_files_are_checked(tiny_lm, sentinel_probe_file, tmp_path):
    from ragline.compressors.sentinel import Sentinel, SentinelProbe

    with pytest.raises(InputError, match="no Sentinel probe"):
        SentinelProbe.load(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "ragline-sentinel/1",\n "proxy": ')
    with pytest.raises(InputError, match=r"broken.json:2: not a Sentinel probe"):
        SentinelProbe.load(broken)
    data = json.loads(sentinel_probe_file.read_text())
    data["coef"] = data["coef"][:3]
    short = tmp_path / "short.json"
    short.write_text(json.dumps(data))  # edited, its checksum kept: refused as changed
    with pytest.raises(InputError, match=r"short.json: this Sentinel probe was changed or damaged after it was written"):
        SentinelProbe.load(short)
    del data["checksum"]  # as written by hand, or before probes had checksums: its contents are checked
    short.write_text(json.dumps(data))
    with pytest.raises(InputError, match="vector sizes"):
        SentinelProbe.load(short)
    data = json.loads(sentinel_probe_file.read_text())
    del data["checksum"]
    data.update(layers=3, mean=[0.0] * 12, scale=[1.0] * 12, coef=[0.0] * 12, heads=4)
    wrong_shape = tmp_path / "wrong.json"
    wrong_shape.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="3 layers"):
        Sentinel(probe=str(wrong_shape), device="cpu", tokenizer=tiny_lm).warm_up()


def test_train_sentinel_writes_a_probe_the_stage_loads(tiny_lm, hotpotqa_path, tmp_path):
    from ragline.compressors.sentinel import Sentinel
    from ragline.compressors.sentinel_training import train_sentinel
    from ragline.engine.data.hotpotqa import read_hotpotqa

    questions = [q for q in read_hotpotqa(hotpotqa_path, limit=40) if q.supporting]
    complete = [q for q in questions if q.evidence_complete]
    in_training = sum(q.evidence_complete for q in questions[:12])
    assert 0 < in_training < 12
    out = tmp_path / "sentinel.json"
    summary = train_sentinel(questions[:12], complete[-1:], tiny_lm, out, device="cpu")
    assert summary["train_questions"] == in_training  # only those whose evidence is all there
    assert summary["train_positives"] > 0 and summary["train_sentences"] > 20
    assert 0.0 <= summary["test_auc"] <= 1.0
    stage = Sentinel(probe=str(out), ratio=0.5, device="cpu", tokenizer=tiny_lm)
    assert Pipeline([stage]).run([query_with(passages())])[0].context


def test_the_question_tokens_read_the_context_too_in_the_same_forward(tiny_lm):
    from ragline.compressors.attention_features import AttentionFeatures
    from ragline.engine.lm.causal_lm import load_causal_lm

    model, tokenizer = load_causal_lm(tiny_lm, device="cpu", dtype="float32")
    reader = AttentionFeatures(model, tokenizer)
    units = sentence_units(passages())
    last = reader("What is the capital of France?", passages(), units, "last")
    over_question = reader("What is the capital of France?", passages(), units, "question")
    both = reader("What is the capital of France?", passages(), units, "last+question")
    width = reader.layers * reader.heads
    assert last.shape == over_question.shape == (len(units), width) and both.shape == (len(units), 2 * width)
    assert np.allclose(both[:, :width], last) and np.allclose(both[:, width:], over_question)
    assert not np.allclose(last, over_question)
    # Each reading is a share of the context's attention times its length: it averages 1 per token.
    lengths = np.asarray([len(tokenizer(u.text, add_special_tokens=False).input_ids) for u in units])
    assert np.allclose((over_question * lengths[:, None]).sum(axis=0) / lengths.sum(), 1.0, atol=0.05)
    with pytest.raises(ValueError, match="pooling"):
        reader("Q?", passages(), units, "first")


def test_a_probe_of_chosen_heads_with_the_embedding_feature_runs_and_is_checked(tiny_lm, tmp_path):
    from ragline.compressors.sentinel import Sentinel, SentinelProbe

    # The tiny model has 2 layers × 4 heads; question pooling; 3 chosen features + the similarity.
    probe = SentinelProbe(proxy=tiny_lm, layers=2, heads=4, mean=[0.0] * 4, scale=[1.0] * 4,
                          coef=[0.0, 0.0, 0.0, 5.0], intercept=0.0, pooling="question", selected=[0, 3, 5],
                          features="attention+embedding", embedding_model="sentence-transformers/all-MiniLM-L6-v2")
    path = tmp_path / "probe.json"
    probe.save(path)
    stage = Sentinel(probe=str(path), budget=12, device="cpu")  # budget in SmolLM2's tokens, as the embedding test
    query = Pipeline([stage]).run([query_with(passages())])[0]
    # Only the similarity weighs: the sentence the encoder finds closest is kept.
    assert "Paris is the capital of France." in query.context and "Bananas" not in query.context
    assert Sentinel(**stage.to_config()).to_config() == stage.to_config()

    with pytest.raises(ConfigError, match="trained on attention\\+embedding features, not attention"):
        Sentinel(probe=str(path), features="attention", device="cpu", tokenizer=tiny_lm).warm_up()
    with pytest.raises(ConfigError, match="needs a trained probe"):
        Sentinel(features="attention+embedding")
    with pytest.raises(ConfigError, match="sentinel: features: input should be 'attention' or 'attention\\+embedding'"):
        Sentinel(features="attention+bm25")
    data = json.loads(path.read_text())
    del data["checksum"]  # hand-made variants: their contents are what is checked
    for change, message in (({"selected": [0, 8, 1]}, "outside the 8 attention features"),
                            ({"features": "attention"}, "vector sizes"),
                            ({"pooling": "last+question", "selected": None}, "vector sizes"),
                            ({"pooling": "middle"}, "unknown pooling"),
                            ({"selected": [], "mean": [0.0], "scale": [1.0], "coef": [1.0]}, "distinct"),
                            ({"selected": [0, 0, 5]}, "distinct"),
                            ({"embedding_model": None}, "must name its embedding_model")):
        broken = tmp_path / "broken.json"
        broken.write_text(json.dumps({**data, **change}))
        with pytest.raises(InputError, match=message):
            SentinelProbe.load(broken)


def test_a_probe_of_chosen_heads_makes_the_proxy_compute_only_those(tiny_lm, tmp_path):
    from ragline.compressors.attention_features import AttentionFeatures
    from ragline.compressors.sentinel import Sentinel, SentinelProbe
    from ragline.engine.lm.causal_lm import load_causal_lm

    # 2 layers × 4 heads, both readings: columns 0–7 the last token's, 8–15 the question's.
    selected = [1, 6, 9, 14]  # (0, 1) and (1, 2) of the last token; (0, 1) and (1, 2) of the question
    probe = SentinelProbe(proxy=tiny_lm, layers=2, heads=4, mean=[0.1, -0.2, 0.0, 0.3], scale=[1.0, 2.0, 0.5, 1.0],
                          coef=[1.0, -0.5, 0.25, 2.0], intercept=0.1, pooling="last+question", selected=selected)
    assert probe.heads_read() == [(0, 1), (1, 2)]
    model, tokenizer = load_causal_lm(tiny_lm, device="cpu", dtype="float32")
    reader = AttentionFeatures(model, tokenizer)
    units = sentence_units(passages())
    every = reader("What is the capital of France?", passages(), units, "last+question")
    chosen = reader("What is the capital of France?", passages(), units, "last+question", probe.heads_read())
    assert np.allclose(chosen[:, selected], every[:, selected], atol=1e-6)
    assert not chosen[:, [c for c in range(16) if c not in selected]].any()
    path = tmp_path / "probe.json"
    probe.save(path)
    stage = Sentinel(probe=str(path), ratio=0.5, device="cpu", tokenizer=tiny_lm)
    stage.warm_up()
    asked = []
    run = stage.features.probe.run
    stage.features.probe.run = lambda *args, **kwargs: asked.append(kwargs.get("heads")) or run(*args, **kwargs)
    scores = stage.score_units("What is the capital of France?", passages(), units)
    assert asked == [[(0, 1), (1, 2)]]  # the kernel was asked for those two heads alone
    assert np.allclose(scores, probe.probabilities(every), atol=1e-6)


def test_head_selection_ranks_the_informative_features_first_and_cross_validates_how_many():
    from ragline.compressors.sentinel_training import TrainingSet, ranked_features, train_probe

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 1200)
    attention = rng.lognormal(size=(1200, 16)).astype(np.float32)
    attention[:, 11] *= np.exp(1.5 * labels)  # two heads that attend more to supporting sentences
    attention[:, 4] *= np.exp(-1.0 * labels)  # ...and one that attends less: informative too
    groups = np.repeat(np.arange(40), 30)
    assert list(ranked_features(np.log(attention), labels)[:2]) == [11, 4]
    probe = train_probe(TrainingSet(attention, labels, groups), "m", layers=4, heads=4, select=True)
    assert probe.selected is not None and probe.selected[:2] == [11, 4] and len(probe.selected) < 16
    assert probe.training["selected_features"] == len(probe.selected) and probe.training["cv_auc"] > 0.75
    assert len(probe.coef) == len(probe.selected)


def test_attention_rag_top_k_keeps_the_sentences_of_the_top_tokens(tiny_lm):
    from ragline.compressors.attention_rag import AttentionRAG

    for read in ("predicting", "generated"):
        stage = AttentionRAG(model=tiny_lm, tokenizer=tiny_lm, top_k=2, cue="The capital is", read=read,
                             drop_none=False, device="cpu")
        query = Pipeline([stage]).run([query_with(passages())])[0]
        note = query.trace[-1].extra
        assert 1 <= note["kept"] <= 2  # two tokens hold at most two sentences
        assert "threshold" not in stage.to_config()
    with pytest.raises(ConfigError, match="not both"):
        AttentionRAG(top_k=3, ratio=0.5)
    with pytest.raises(ConfigError, match="read"):
        AttentionRAG(read="middle")


def test_attention_rag_budget_mode_and_a_generated_cue(tiny_lm):
    from ragline.compressors.attention_rag import AttentionRAG

    stage = AttentionRAG(model=tiny_lm, tokenizer=tiny_lm, ratio=0.5, chunk_tokens=16, drop_none=False, device="cpu")
    query = Pipeline([stage]).run([query_with(passages())])[0]
    note = query.trace[-1].extra
    assert note["tokens_after"] <= 0.5 * note["tokens_before"]
    assert isinstance(stage.make_cue("Who wrote Hamlet?"), str) and stage.make_cue("Who wrote Hamlet?")


def test_attention_rag_falls_back_to_a_generic_cue():
    from ragline.compressors.attention_rag import GENERIC_CUE, AttentionRAG

    assert AttentionRAG(cue="").make_cue("Is it?") == GENERIC_CUE
    assert AttentionRAG(cue="It is").make_cue("Is it?") == "It is"


def test_train_sentinel_command_reports_held_out_auc(tiny_lm, hotpotqa_path, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "probe.json"
    result = subprocess.run([sys.executable, "-m", "ragline.cli", "train", "sentinel", "--data",
                             str(hotpotqa_path), "--proxy", tiny_lm, "--out", str(out), "--limit", "6",
                             "--test-limit", "3", "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "held out: 3 questions, AUC" in " ".join(result.stdout.split())  # rich wraps long lines
    probe = json.loads(out.read_text())
    assert probe["training"]["test_questions"] == 3 and probe["training"]["train_questions"] == 6
    # The default is the best measured recipe, not the paper's.
    assert probe["pooling"] == "last+question" and probe["features"] == "attention+embedding"
    assert probe["training"]["complete_only"] is True
    kept = probe["training"]["selected_features"]  # chosen by cross-validation: may be all 2 × 4 × 2
    assert len(probe["coef"]) == kept + 1 and kept == (len(probe["selected"]) if probe["selected"] else 16)


def test_the_paper_recipe_is_an_option_and_single_settings_change_a_recipe():
    from ragline.compressors.sentinel_training import BEST, PAPER, recipe_named

    assert recipe_named("best") == BEST and BEST.pooling == "last+question" and BEST.select
    assert recipe_named("paper") == PAPER and (PAPER.pooling, PAPER.features, PAPER.select) == ("last", "attention", False)
    assert not PAPER.complete_only
    changed = recipe_named("paper", pooling="question", select=None)
    assert (changed.pooling, changed.select, changed.features) == ("question", False, "attention")
    with pytest.raises(ConfigError, match="unknown Sentinel recipe 'papers'"):
        recipe_named("papers")


def test_packing_keeps_order_and_gives_an_overlong_item_its_own_chunk():
    from ragline.compressors.sentences import pack_in_order

    assert pack_in_order([3, 3, 3, 10, 1], 6) == [[0, 1], [2], [3], [4]]
    assert pack_in_order([], 5) == []
