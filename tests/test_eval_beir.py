import hashlib
import http.server
import io
import json
import threading
import zipfile

import pytest

from ragline.engine.data.runfile import read_run
from ragline.engine.data.topics import read_qrels
from ragline.engine.errors import InputError, RaglineError
from ragline.engine.retrieval_pipeline import retrieval_pipeline
from ragline.eval import beir_datasets as beir
from ragline.eval.beir_runner import evaluate_beir
from ragline.eval.convert import trec_to_beir
from ragline.eval.metrics import mean_scores
from ragline.eval.retrieval_eval import trec_metric


@pytest.fixture(scope="module")
def vaswani_beir(vaswani, tmp_path_factory):
    out = tmp_path_factory.mktemp("beir") / "vaswani"
    counts = trec_to_beir(vaswani / "doc-text.trec", vaswani / "query-text.trec", vaswani / "qrels", out)
    assert counts == {"documents": 11429, "queries": 93, "judgements": 2083}
    return out


def test_converted_folder_is_valid_beir(vaswani_beir):
    dataset = beir.open_dataset(str(vaswani_beir))
    first = json.loads(dataset.corpus.open().readline())
    assert first["_id"] == "1" and first["text"].startswith("compact memories")
    assert dataset.qrels.read_text().splitlines()[0] == "query-id\tcorpus-id\tscore"


def test_beir_runner_metrics_equal_pytrec_eval_on_its_run(vaswani_beir, vaswani_bm25_index, tmp_path):
    dataset = beir.open_dataset(str(vaswani_beir))
    pipeline = retrieval_pipeline(str(vaswani_bm25_index), "bm25", k=1000, top_k=0)
    evaluation, summary = evaluate_beir(dataset, pipeline, out=tmp_path / "res")
    run = read_run(tmp_path / "res" / "run.trec")
    direct = mean_scores(read_qrels(dataset.qrels), run, ["ndcg_cut_10", "recall_100", "map_cut_100"])
    assert evaluation.means == pytest.approx(direct, abs=1e-6)
    assert evaluation.means["ndcg_cut_10"] == pytest.approx(0.4368, abs=1e-4)
    lines = (tmp_path / "res" / "per_query.jsonl").read_text().splitlines()
    assert len(lines) == 93 and set(json.loads(lines[0])) == {"qid", "ndcg_cut_10", "recall_100", "map_cut_100"}
    saved = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert saved["config"]["pipeline"]["stages"][0]["bm25"]["k1"] == 0.9
    index_meta = saved["config"]["indexes"][str(vaswani_bm25_index)]
    assert index_meta["components"]["bm25"]["count"] == 11429
    assert {"python", "ragline", "pyserini"} <= set(saved["versions"])
    assert saved["queries"] == 93 and saved["reference"] == {}


def tiny_beir(root, queries: str, qrels: str):
    """A BEIR folder with an empty corpus (the tests search another index)."""
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("")
    (root / "queries.jsonl").write_text(queries)
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return root


def test_reference_and_remove_query(tmp_path, vaswani_bm25_index):
    # A tiny arguana-like set: the query id is also a document id, and that
    # document must not count as a hit.
    root = tiny_beir(tmp_path / "arguana", '{"_id": "9859", "text": "dielectric constant of liquids"}\n', "9859\t5502\t1\n")
    dataset = beir.open_dataset(str(root))
    assert dataset.name == "arguana"
    pipeline = retrieval_pipeline(str(vaswani_bm25_index), "bm25", k=50, top_k=0)
    evaluation, _ = evaluate_beir(dataset, pipeline)
    assert "9859" not in dict(evaluation.run["9859"])
    kept, _ = evaluate_beir(dataset, pipeline, remove_query=False)
    assert "9859" in dict(kept.run["9859"])
    assert beir.BM25_FLAT_NDCG10["scifact"] == 0.6789


def test_metric_names():
    assert [trec_metric(m) for m in ("nDCG@10", "Recall@100", "MAP@100", "P@5", "MRR@10", "map")] == [
        "ndcg_cut_10", "recall_100", "map_cut_100", "P_5", "recip_rank", "map"]


def test_bad_beir_folders(tmp_path, vaswani_beir):
    with pytest.raises(InputError, match="no qrels for split 'dev'"):
        beir.open_dataset(str(vaswani_beir), split="dev")
    with pytest.raises(InputError, match="not a known dataset name"):
        beir.open_dataset(str(tmp_path / "nope"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "corpus.jsonl").write_text("")
    with pytest.raises(InputError, match="needs queries.jsonl"):
        beir.open_dataset(str(tmp_path / "half"))


def test_qrels_naming_unknown_queries_are_rejected(tmp_path, vaswani_bm25_index):
    root = tiny_beir(tmp_path / "odd", '{"_id": "1", "text": "liquids"}\n', "1\t5\t1\n999\t5\t1\n")
    pipeline = retrieval_pipeline(str(vaswani_bm25_index), "bm25", k=10, top_k=0)
    with pytest.raises(InputError, match=r"test.tsv: qrels name 1 unknown query id"):
        evaluate_beir(beir.open_dataset(str(root)), pipeline)


class _ZipServer(http.server.BaseHTTPRequestHandler):
    payload = b""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def zip_server():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("scifact/corpus.jsonl", '{"_id": "d", "text": "t"}\n')
        z.writestr("scifact/queries.jsonl", '{"_id": "q", "text": "t"}\n')
        z.writestr("scifact/qrels/test.tsv", "query-id\tcorpus-id\tscore\nq\td\t1\n")
    _ZipServer.payload = buffer.getvalue()
    server = http.server.HTTPServer(("127.0.0.1", 0), _ZipServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", hashlib.md5(_ZipServer.payload).hexdigest()
    server.shutdown()


def test_download_verifies_checksum_before_unpacking(zip_server, tmp_path, monkeypatch):
    url, md5 = zip_server
    monkeypatch.setattr(beir, "BASE_URL", url)
    with pytest.raises(RaglineError, match="expected 5f7d1de6"):
        beir.open_dataset("scifact", cache=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setitem(beir.DATASET_MD5, "scifact", md5)
    dataset = beir.open_dataset("scifact", cache=tmp_path / "cache")
    assert dataset.root == tmp_path / "cache" / "scifact" and dataset.qrels.is_file()


def test_offline_download_says_where_to_put_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr(beir, "BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(RaglineError, match=r"put the folder at .*cache/nfcorpus"):
        beir.open_dataset("nfcorpus", cache=tmp_path / "cache")
