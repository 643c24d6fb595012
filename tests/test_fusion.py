import pytest

from ragline.engine.errors import ConfigError
from ragline.engine.types import Hit, Query
from ragline.retrievers.fusion import Fuse, reciprocal_rank_fusion, weighted_fusion


def hits(source, *pairs):
    return [Hit(pid, score, rank, source) for rank, (pid, score) in enumerate(pairs, 1)]


BM25 = hits("bm25", ("a", 12.0), ("b", 10.0), ("c", 4.0))
DENSE = hits("dense", ("c", 0.9), ("a", 0.8), ("d", 0.1))


def test_rrf_sums_reciprocal_ranks():
    fused = {h.id: h.score for h in reciprocal_rank_fusion([BM25, DENSE], k=60)}
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["b"] == pytest.approx(1 / 62)
    assert fused["d"] == pytest.approx(1 / 63)
    order = [h.id for h in reciprocal_rank_fusion([BM25, DENSE])]
    assert order == ["a", "c", "b", "d"]


def test_rrf_ties_break_by_id_and_ranks_are_consecutive():
    fused = reciprocal_rank_fusion([hits("x", ("z", 1.0)), hits("y", ("m", 1.0))])
    assert [(h.id, h.rank) for h in fused] == [("m", 1), ("z", 2)]


def test_weighted_minmax():
    fused = {h.id: h.score for h in weighted_fusion([BM25, DENSE], [1.0, 2.0], "minmax")}
    # bm25 min-max: a=1, b=0.75, c=0; dense: c=1, a=0.875, d=0
    assert fused == pytest.approx({"a": 1 + 2 * 0.875, "b": 0.75, "c": 0 + 2 * 1.0, "d": 0.0})


def test_weighted_zscore_centres_each_list():
    fused = {h.id: h.score for h in weighted_fusion([BM25], [1.0], "zscore")}
    assert sum(fused.values()) == pytest.approx(0.0)
    assert fused["a"] > fused["b"] > fused["c"]


def test_fuse_stage_uses_chosen_sources_weights_and_top_k():
    query = Query("q", "text", hits={"bm25": BM25, "dense": DENSE})
    Fuse("weighted", weights={"dense": 0.0}, top_k=2).run([query])
    assert [h.id for h in query.ranking] == ["a", "b"]
    Fuse("rrf", sources=["dense"]).run([query])
    assert [h.id for h in query.ranking] == ["c", "a", "d"]


def test_fuse_rejects_unknown_method():
    with pytest.raises(ConfigError, match=r"fuse: method: input should be 'rrf' or 'weighted' \(got 'max'\)"):
        Fuse("max")
