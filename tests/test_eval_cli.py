"""The evaluation verbs as a user runs them."""

import json
import subprocess
import sys


def ragline(*args):
    return subprocess.run([sys.executable, "-m", "ragline.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_eval_beir_builds_an_index_and_writes_results(tmp_path):
    root = tmp_path / "tiny"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        '{"_id": "d1", "title": "Fusion", "text": "reciprocal rank fusion of ranked lists"}\n'
        '{"_id": "d2", "title": "Java", "text": "lucene runs on the java virtual machine"}\n')
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "rank fusion"}\n{"_id": "q2", "text": "java lucene"}\n')
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    result = ragline("eval", "beir", root, "--index", tmp_path / "idx", "--retriever", "bm25", "--out", tmp_path / "res")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert summary["metrics"]["ndcg_cut_10"] == 1.0 and summary["queries"] == 2
    assert "ndcg_cut_10" in result.stdout and (tmp_path / "idx" / "meta.json").exists()
    missing = ragline("eval", "beir", root, "--index", tmp_path / "idx", "--split", "dev")
    assert missing.returncode == 2 and "no qrels for split 'dev'" in missing.stderr


def test_eval_qa_and_open_corpus(tmp_path, vaswani):
    data = vaswani.parent / "hotpotqa-distractor.jsonl"
    result = ragline("eval", "qa", data, "--limit", "30", "--complete-only", "--out", tmp_path / "qa")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "qa" / "summary.json").read_text())
    assert summary["support_recall"] == 1.0 and summary["em"] is None
    assert "n/a (no answers generated)" in result.stdout
    corpus = ragline("convert", "hotpotqa-corpus", data, "--out", tmp_path / "paragraphs.jsonl")
    assert corpus.returncode == 0, corpus.stderr
    first = json.loads((tmp_path / "paragraphs.jsonl").read_text().splitlines()[0])
    assert " " not in first["id"] and first["title"] == "Night School: the Web Series"


def test_malformed_qa_file_exits_2(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"_id": "a", "question": "q?"}\n')
    result = ragline("eval", "qa", tmp_path / "bad.jsonl")
    assert result.returncode == 2 and "bad.jsonl:1: not a HotpotQA record" in result.stderr
