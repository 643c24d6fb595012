import json

import pytest

from ragline.engine.errors import InputError
from ragline.engine.index.build import build_index
from ragline.engine.index.layout import IndexDir
from ragline.retrievers.bm25 import BM25


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_failed_rebuild_leaves_previous_index_intact(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [{"id": "a", "text": "alpha particles"}, {"id": "b", "text": "beta decay"}])
    out = tmp_path / "idx"
    build_index(good, out, {"bm25": {}})
    before = (out / "meta.json").read_text()

    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + '{"id": "c", "text": broken\n')
    with pytest.raises(InputError, match=r"bad.jsonl:3"):
        build_index(bad, out, {"bm25": {}})
    assert (out / "meta.json").read_text() == before
    assert leftovers(tmp_path) == []
    assert [pid for pid, _ in BM25(str(out)).search(["alpha"])[0]] == ["a"]


def test_failed_first_build_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "ok"}\nnot json\n')
    with pytest.raises(InputError):
        build_index(bad, tmp_path / "idx", {"bm25": {}})
    assert not (tmp_path / "idx").exists() and leftovers(tmp_path) == []


def test_empty_corpus_is_an_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match="no documents"):
        build_index(tmp_path / "empty.jsonl", tmp_path / "idx", {"bm25": {}})
    assert not (tmp_path / "idx").exists()


def test_duplicate_ids_are_reported_with_their_line(tmp_path):
    corpus = write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}])
    with pytest.raises(InputError, match=r"dup.jsonl:3: duplicate document id 'a'"):
        build_index(corpus, tmp_path / "idx", {"bm25": {}})


def test_chunked_index_keeps_doc_ids_and_offsets(tmp_path):
    text = " ".join(f"word{i}" for i in range(50)) + " uniqueterm"
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "long", "title": "T", "text": text}, {"id": "short", "text": "tiny"}])
    meta = build_index(corpus, tmp_path / "idx", {"bm25": {}}, window=20, overlap=5)
    assert (meta["documents"], meta["passages"]) == (2, 5)
    index = IndexDir.open(tmp_path / "idx")
    (pid, _), = BM25(str(tmp_path / "idx")).search(["uniqueterm"])[0]
    assert pid == "long#3"
    passage = index.docstore().get([pid])[pid]
    assert passage.doc_id == "long" and text[passage.start : passage.end] == passage.text


def test_meta_records_corpus_and_components(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "x"}])
    meta = build_index(corpus, tmp_path / "idx", {"bm25": {}})
    on_disk = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert on_disk == meta
    assert meta["format_version"] == 1 and meta["corpus_format"] == "jsonl"
    assert meta["components"]["bm25"]["count"] == 1 and (meta["components"]["bm25"]["k1"], meta["components"]["bm25"]["b"]) == (0.9, 0.4)


def test_rebuilt_index_serves_new_texts_in_the_same_process(tmp_path):
    from ragline.engine.pipeline import Pipeline

    out = tmp_path / "idx"
    for version in ("first", "second"):
        corpus = write_jsonl(tmp_path / f"{version}.jsonl", [{"id": "a", "text": f"shared term {version} edition"}])
        build_index(corpus, out, {"bm25": {}})
        (result,) = Pipeline([BM25(str(out))]).run(["shared term"])
        assert result.passages[0].text == f"shared term {version} edition"


def test_run_from_a_chunked_index_scores_documents_by_their_best_passage(tmp_path):
    from ragline.engine.retrieval_pipeline import fold_to_documents, retrieval_pipeline

    text = "alpha " * 15 + "target " * 10 + "beta " * 40  # "target" in chunks 0 and 1
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "long", "text": text}, {"id": "other", "text": "target once"}])
    build_index(corpus, tmp_path / "idx", {"bm25": {}}, window=20, overlap=0)
    (result,) = retrieval_pipeline(str(tmp_path / "idx"), "bm25", k=10).run(["target"])
    assert len({h.id for h in result.ranking if h.id.startswith("long#")}) > 1
    folded = fold_to_documents(result.ranking)
    assert [doc for doc, _ in folded] == ["long", "other"]
    assert folded[0][1] == max(h.score for h in result.ranking)
