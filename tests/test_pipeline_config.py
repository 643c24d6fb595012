import pytest
import yaml

from ragline.engine.errors import ConfigError
from ragline.engine.pipeline import Pipeline
from ragline.engine.registry import STAGES, register_stage, unregister
from ragline.engine.stage import Stage
from ragline.engine.types import Hit, Query
from ragline.retrievers.bm25 import BM25
from ragline.retrievers.dense import Dense
from ragline.retrievers.fusion import Fuse


def hybrid(index) -> Pipeline:
    return Pipeline([BM25(index, k=50), Dense(index, k=50), Fuse("rrf", k=60, top_k=20)], top_k=5)


def rankings(results):
    return [[(h.id, h.score) for h in q.ranking] for q in results]


def test_yaml_round_trip_gives_identical_rankings(hybrid_index, vaswani_queries, tmp_path):
    index = str(hybrid_index)
    queries = [text for _, text in vaswani_queries[:10]]
    built = hybrid(index)
    before = built.run(queries)
    built.save(tmp_path / "rag.yaml")
    loaded = Pipeline.load(tmp_path / "rag.yaml")
    assert loaded.to_config() == built.to_config()
    after = loaded.run(queries)
    assert rankings(after) == rankings(before)
    assert all(len(q.ranking) == 20 for q in after)
    assert [[p.id for p in q.passages] for q in after] == [[h.id for h in q.ranking[:5]] for q in after]


def test_hand_written_yaml_equals_python_builder(hybrid_index, tmp_path):
    index = str(hybrid_index)
    (tmp_path / "rag.yaml").write_text(
        f"top_k: 5\nstages:\n  - bm25: {{index: {index}, k: 50}}\n  - dense: {{index: {index}, k: 50}}\n"
        "  - fuse: {method: rrf, k: 60, top_k: 20}\n"
    )
    loaded = Pipeline.load(tmp_path / "rag.yaml")
    assert loaded.to_config() == hybrid(index).to_config()


def test_trace_records_every_stage(hybrid_index):
    (result,) = hybrid(str(hybrid_index)).run(["microwave measurement"])
    assert [t.stage for t in result.trace] == ["bm25", "dense", "fuse"]
    assert [t.items_out for t in result.trace][:2] == [50, 50]
    assert result.trace[2].items_out == 20 and all(t.seconds >= 0 for t in result.trace)
    assert result.to_dict()["trace"][0]["stage"] == "bm25"


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("stages:\n  - bm25: {index: x}\n  - nosuch: {}\n", 3, "unknown stage 'nosuch'"),
        ("stages:\n  - bm25: {index: x, kk: 3}\n", 2, "no parameter(s) ['kk']"),
        ("stages:\n  - fuse: {method: max}\n", 2, "fuse: method: input should be 'rrf' or 'weighted'"),
        ("stages:\n  - bm25: {index: x}\n  - fuse: {method: rrf}}\n  - dense: {index: x}\n", 3, "not valid YAML"),
        ("stages: []\n", 1, "non-empty list"),
        ("stage:\n  - bm25: {index: x}\n", 1, "unknown key"),
        ("stages:\n  - bm25: {index: x}\n    dense: {index: x}\n", 2, "one-key mapping"),
    ],
)
def test_config_errors_name_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        Pipeline.load(path)
    assert message in str(info.value)
    assert info.value.line == line and str(path) in str(info.value)


def test_two_retrievers_need_a_fusion_stage():
    with pytest.raises(ConfigError, match="no 'fuse' stage"):
        Pipeline([BM25("x"), Dense("x")])


def test_user_stage_registered_by_name_runs_in_yaml(tmp_path):
    @register_stage("constant_hits")
    class ConstantHits(Stage):
        is_retriever = True

        def __init__(self, ids: list[str]):
            self.ids = ids

        def run(self, batch):
            for q in batch:
                q.ranking = [Hit(pid, 1.0 / r, r, self.name) for r, pid in enumerate(self.ids, 1)]
            return batch

    try:
        pipe = Pipeline([ConstantHits(["a", "b"])])
        pipe.save(tmp_path / "p.yaml")
        assert yaml.safe_load((tmp_path / "p.yaml").read_text())["stages"] == [{"constant_hits": {"ids": ["a", "b"]}}]
        (result,) = Pipeline.load(tmp_path / "p.yaml").run([Query("q1", "anything")])
        assert [h.id for h in result.ranking] == ["a", "b"] and result.id == "q1"
    finally:
        unregister(STAGES, "constant_hits")
    with pytest.raises(ConfigError, match="unknown stage 'constant_hits'"):
        Pipeline.load(tmp_path / "p.yaml")


def test_warm_up_loads_once_however_often_called():
    class Counting(Stage):
        name = "counting"
        loads = 0

        def warm_up(self):
            type(self).loads += 1

        def run(self, batch):
            return batch

    stage = Counting()
    stage.warm_up()
    stage.warm_up()
    Pipeline([stage]).run(["q"])
    assert Counting.loads == 1


@pytest.mark.parametrize("stage, message", [
    ('bm25: {index: idx, k1: "high"}', r"bm25: k1: input should be a valid number"),
    ("bm25: {index: idx, k: 2.5}", r"bm25: k: input should be a valid integer \(got 2.5\)"),
    ('bm25: {index: idx, k: "many"}', r"bm25: k: input should be a valid integer"),
    ("bm25: {index: idx, k: 0}", r"bm25: k: input should be greater than or equal to 1"),
    ('fuse: {method: weighted, weights: {bm25: "x"}}', r"fuse: weights.bm25: input should be a valid number"),
    ("generate: {top_p: 0}", r"generate: top_p: input should be greater than 0"),
    ("sentinel: {ratio: 5}", r"sentinel: ratio: input should be less than or equal to 1"),
])
def test_bad_setting_values_name_the_file_line_and_setting(tmp_path, stage, message):
    config = tmp_path / "p.yaml"
    config.write_text(f"top_k: 5\nstages:\n  - {stage}\n")
    with pytest.raises(ConfigError, match=rf"p.yaml:3: .*{message}"):
        Pipeline.load(config)


@pytest.mark.parametrize("args, option", [
    (["query", "idx", "text", "--k", "0"], "'--k'"),
    (["query", "idx", "text", "--k", "-1"], "'--k'"),
    (["index", "docs", "--out", "idx", "--window", "0"], "'--window'"),
    (["index", "docs", "--out", "idx", "--window", "5", "--overlap", "5"], "'--overlap'"),
    (["eval", "qa", "data.jsonl", "--limit", "-1"], "'--limit'"),
])
def test_bad_option_values_name_the_option(tmp_path, args, option):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "ragline.cli", *args], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert option in result.stderr and "Traceback" not in result.stderr


def test_the_documented_headline_pipeline_loads():
    from pathlib import Path

    pipeline = Pipeline.load(Path(__file__).resolve().parents[1] / "docs" / "headline-p4.yaml")
    assert [s.name for s in pipeline.stages] == ["bm25", "dense", "fuse", "cross_encoder", "sentinel", "attnrank",
                                                 "generate"]
    assert pipeline.stages[-1].kv_reuse == "sink"
