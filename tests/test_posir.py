import pandas as pd
import pytest

from ragline.engine.errors import InputError
from ragline.eval.posir import discover, evaluate_posir, query_rows
from ragline.eval.posir_build import LENGTHS, build_posir
from ragline.eval.posir_plot import plot_position_bias


@pytest.fixture(scope="module")
def small_posir(vaswani, tmp_path_factory):
    source = vaswani.parent / "hotpotqa-distractor.jsonl"
    out = tmp_path_factory.mktemp("posir") / "root"
    counts = build_posir(source, out, limit=40)
    assert set(counts) == {f"hotpotqa-{d}" for d in LENGTHS}
    return out


def test_built_benchmark_places_evidence_where_it_says(small_posir):
    domain = small_posir / "eng-Latn" / "hotpotqa-q3"
    queries = pd.read_parquet(domain / "queries.parquet")
    corpus = pd.read_parquet(domain / "corpus.parquet").set_index("_id")
    qrels = pd.read_parquet(domain / "qrels" / "test.parquet")
    assert len(queries) == len(corpus) == len(qrels)
    for query, (_, judged) in zip(queries.itertuples(index=False), qrels.iterrows()):
        doc = corpus.loc[judged["corpus-id"]]["text"]
        start, end = query.pos_char_span
        assert query.pos_char_length == len(doc) and 0 <= start < end <= len(doc)
        assert 1024 < query.pos_token_length <= 1536 + 100
    rows = query_rows(domain)
    # Positions cycle through the 20 bins: the placed evidence lands near each bin's centre.
    assert min(r["relpos"] for r in rows) < 0.1 and max(r["relpos"] for r in rows) > 0.9
    assert {r["bucket"] for r in rows} <= {"Q3", "Q4"}


def test_evaluation_report_and_plot(small_posir, tmp_path):
    result = evaluate_posir(small_posir, "all-MiniLM-L6-v2")
    report = result["report"]["eng-Latn"]
    assert report["overall"]["queries"] == len(result["rows"]["eng-Latn"]) == sum(report[b]["queries"] for b in ("Q1", "Q2", "Q3", "Q4") if b in report)
    assert 0.0 <= report["overall"]["mean_ndcg10"] <= 1.0
    # MiniLM reads 256 tokens: evidence late in long documents is invisible to it.
    assert report["overall"]["slope"] < 0
    assert report["Q1"]["mean_ndcg10"] > report["Q4"]["mean_ndcg10"]
    png = plot_position_bias({"MiniLM": report}, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_posir_input(tmp_path, small_posir):
    with pytest.raises(InputError, match="no <lang-Script>"):
        discover(tmp_path)
    with pytest.raises(InputError, match="no PosIR data for language"):
        discover(small_posir, ["deu-Latn"])
    broken = tmp_path / "eng-Latn" / "d"
    broken.mkdir(parents=True)
    (broken / "queries.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=r"queries.parquet: not a readable parquet file"):
        query_rows(broken)
    pd.DataFrame({"_id": ["q"], "text": ["x"]}).to_parquet(broken / "queries.parquet")
    with pytest.raises(InputError, match="missing column"):
        query_rows(broken)


def test_cross_lingual_mode_searches_the_english_corpus(small_posir, tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(small_posir / "eng-Latn" / "hotpotqa-q1", root / "eng-Latn" / "hotpotqa-q1")
    other = root / "xxx-Latn" / "hotpotqa-q1"
    (other / "qrels").mkdir(parents=True)
    # The "other language" has queries and qrels but no corpus of its own.
    shutil.copy(small_posir / "eng-Latn" / "hotpotqa-q1" / "queries.parquet", other)
    shutil.copy(small_posir / "eng-Latn" / "hotpotqa-q1" / "qrels" / "test.parquet", other / "qrels")
    with pytest.raises(InputError, match="corpus.parquet: missing file"):
        evaluate_posir(root, "all-MiniLM-L6-v2", ["xxx-Latn"])
    result = evaluate_posir(root, "all-MiniLM-L6-v2", ["xxx-Latn"], cross_lingual=True)
    english = evaluate_posir(root, "all-MiniLM-L6-v2", ["eng-Latn"])
    assert result["report"]["xxx-Latn"]["overall"]["mean_ndcg10"] == pytest.approx(
        english["report"]["eng-Latn"]["overall"]["mean_ndcg10"])
