"""Shared fixtures. Indexes over real data are built once per session."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from ragline.engine.corpus import read_corpus

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VASWANI = SHARED_DATA / "vaswani"


@pytest.fixture(scope="session")
def vaswani() -> Path:
    if not (VASWANI / "doc-text.trec").exists():
        pytest.skip(f"real data not found at {VASWANI}")
    return VASWANI


@pytest.fixture(scope="session")
def vaswani_subset(vaswani, tmp_path_factory) -> Path:
    """The first 400 Vaswani documents as a JSONL corpus: small enough to embed quickly."""
    path = tmp_path_factory.mktemp("subset") / "corpus.jsonl"
    docs = itertools.islice(read_corpus(vaswani / "doc-text.trec"), 400)
    path.write_text("".join(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in docs))
    return path


@pytest.fixture(scope="session")
def vaswani_bm25_index(vaswani, tmp_path_factory) -> Path:
    from ragline.engine.indexing import build_index

    out = tmp_path_factory.mktemp("vaswani") / "idx"
    build_index(vaswani / "doc-text.trec", out, {"bm25": {}})
    return out


@pytest.fixture(scope="session")
def hybrid_index(vaswani_subset, tmp_path_factory) -> Path:
    """BM25 + dense (packaged MiniLM, flat) over the 400-document subset."""
    from ragline.engine.indexing import build_index

    out = tmp_path_factory.mktemp("hybrid") / "idx"
    build_index(vaswani_subset, out, {"bm25": {}, "dense": {}})
    return out


@pytest.fixture(scope="session")
def vaswani_queries(vaswani) -> list[tuple[str, str]]:
    from ragline.engine.topics import read_topics

    return read_topics(vaswani / "query-text.trec")


@pytest.fixture(scope="session")
def hotpotqa_path() -> Path:
    path = SHARED_DATA / "hotpotqa-distractor.jsonl"
    if not path.exists():
        pytest.skip(f"HotpotQA sample not found at {path}")
    return path


@pytest.fixture(scope="session")
def hotpotqa_questions(hotpotqa_path):
    """The 496-question HotpotQA distractor sample."""
    from ragline.engine.hotpotqa import read_hotpotqa

    return read_hotpotqa(hotpotqa_path)
