"""A third index component, declared in this test alone — a builder and the
retriever that reads it, registered under one name — is built, queried,
updated and evaluated through the ragline command, the way bm25 and dense
are, without touching ragline's code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragline.engine.index.component import IndexBuilder, IndexComponent
from ragline.engine.index.layout import read_consistently
from ragline.engine.registry import INDEX_COMPONENTS, register, unregister
from ragline.engine.settings import PositiveInt
from ragline.retrievers.base import Retriever


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


class KeywordBuilder(IndexBuilder):
    """Each passage's distinct words, one JSON line a passage."""

    name = "keywords"

    def open(self, directory: Path) -> None:
        directory.mkdir()
        self._file = (directory / "words.jsonl").open("w")
        self._count = 0

    def add(self, passages, previous_rows=None) -> None:
        for passage in passages:
            self._file.write(json.dumps({"id": passage.id, "words": sorted(words(passage.text))}) + "\n")
        self._file.flush()
        self._count += len(passages)

    def close(self) -> dict:
        self._file.close()
        return {"passages": self._count}

    def abort(self) -> None:
        self._file.close()


class KeywordRetriever(Retriever):
    """Passages by how many of the query's words they hold (ties by id)."""

    name = "keywords"

    def __init__(self, index: str, k: PositiveInt = 10, filter: str | list[str] | None = None):
        self.index, self.k = str(index), k
        self.set_filter(filter)

    def warm_up(self) -> None:
        def read(index):
            folder, _ = index.component("keywords")
            rows = [json.loads(line) for line in (folder / "words.jsonl").read_text().splitlines()]
            return index.docstore(), {row["id"]: set(row["words"]) for row in rows}

        self._store, self._words = read_consistently(self.index, read)

    def search(self, texts, k=None, allowed=None):
        self.warm_up()
        allowed_ids = getattr(allowed, "ids", None)
        results = []
        for text in texts:
            wanted = words(text)
            scored = [(pid, float(len(wanted & held))) for pid, held in self._words.items()
                      if wanted & held and (allowed_ids is None or pid in allowed_ids)]
            results.append(sorted(scored, key=lambda hit: (-hit[1], hit[0]))[: k or self.k])
        return results


@pytest.fixture
def keywords_component():
    register(INDEX_COMPONENTS, "keywords", IndexComponent(KeywordBuilder, KeywordRetriever))
    yield
    unregister(INDEX_COMPONENTS, "keywords")


@pytest.fixture(scope="module")
def ragline():
    from importlib.metadata import entry_points

    from ragline.cli.main import app, calibrate_app, train_app

    for plugin in entry_points(group="ragline.cli"):  # the verb groups, as `ragline` itself adds them
        plugin.load()(app, {"train": train_app, "calibrate": calibrate_app})
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    return run


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


DOCS = [
    {"_id": "d1", "title": "", "text": "the dielectric constant of liquids measured at microwave frequencies"},
    {"_id": "d2", "title": "", "text": "noise in transistor amplifiers"},
    {"_id": "d3", "title": "", "text": "a bridge for measuring the dielectric loss of solids"},
]


def test_a_component_declared_in_a_test_builds_queries_updates_and_evaluates(tmp_path, keywords_component, ragline):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", DOCS)
    index = tmp_path / "idx"
    assert "with keywords" in ragline("index", corpus, "--out", index, "--component", "keywords")
    assert json.loads((index / "meta.json").read_text())["components"]["keywords"]["passages"] == 3

    found = json.loads(ragline("query", index, "dielectric constant of liquids", "--retriever", "keywords", "--json"))
    assert [hit["id"] for hit in found["ranking"]] == ["d1", "d3"]
    assert found["passages"][0]["text"].startswith("the dielectric constant")
    # auto picks the index's only component.
    assert json.loads(ragline("query", index, "transistor noise", "--json"))["ranking"][0]["id"] == "d2"

    extra = write_jsonl(tmp_path / "more.jsonl", [{"_id": "d4", "text": "dielectric constant of liquids and gases"}])
    assert "1 added" in ragline("index", extra, "--out", index, "--update")
    found = json.loads(ragline("query", index, "dielectric constant of liquids gases", "--retriever", "keywords",
                               "--json"))
    assert found["ranking"][0]["id"] == "d4"

    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    write_jsonl(beir / "corpus.jsonl", DOCS)
    write_jsonl(beir / "queries.jsonl", [{"_id": "q1", "text": "dielectric loss of solids"},
                                         {"_id": "q2", "text": "transistor amplifiers"}])
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td3\t1\nq2\td2\t1\n")
    ragline("eval", "beir", beir, "--index", tmp_path / "beir-idx", "--retriever", "keywords", "--k", "10",
            "--out", tmp_path / "results")
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary["queries"] == 2 and summary["metrics"]["ndcg_cut_10"] == pytest.approx(1.0)
    assert list(summary["config"]["pipeline"]["stages"][0]) == ["keywords"]
    assert list(summary["config"]["indexes"][str(tmp_path / "beir-idx")]["components"]) == ["keywords"]
