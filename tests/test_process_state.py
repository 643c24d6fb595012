"""ragline changes no process-wide state for good: the environment, torch's
random stream, other libraries' loggers, open SQLite connections."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys

import pytest

PROBE_ENV = """
import os
from ragline.retrievers.lucene_runtime import import_pyserini
import_pyserini("pyserini.search.lucene")
print(repr(os.environ.get("OPENAI_API_KEY")), repr(os.environ.get("JAVA_HOME")))
"""


@pytest.mark.parametrize("user_key", [None, "sk-users-own"])
def test_bm25_leaves_no_placeholder_api_key_and_keeps_the_users(user_key):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "JAVA_HOME")}
    if user_key:
        env["OPENAI_API_KEY"] = user_key
    result = subprocess.run([sys.executable, "-c", PROBE_ENV], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [repr(user_key), "None"]


def test_sampling_leaves_torchs_global_random_stream_alone(tiny_lm):
    import torch

    from ragline.generators.backend import Sampling
    from ragline.generators.hf_backend import HFGenerator

    generator = HFGenerator(tiny_lm, device="cpu", dtype="float32")
    conversation = [{"role": "user", "content": "Say something."}]
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    first = generator.generate([conversation], Sampling(max_new_tokens=4, temperature=1.0, seed=7))[0]
    assert torch.equal(torch.rand(3), expected)
    again = generator.generate([conversation], Sampling(max_new_tokens=4, temperature=1.0, seed=7))[0]
    assert first.text == again.text  # the seed still makes sampling repeatable


def test_loading_a_cross_encoder_restores_the_sentence_transformers_logger():
    from ragline.rerankers.cross_encoder import load_cross_encoder

    logger = logging.getLogger("sentence_transformers")
    before = logger.level
    logger.setLevel(logging.INFO)
    try:
        load_cross_encoder("all-MiniLM-L6-v2", "cpu", max_length=32)
        assert logger.level == logging.INFO
    finally:
        logger.setLevel(before)


def test_document_stores_close_when_nothing_uses_them(docs_index_dir):
    from ragline.engine.index import layout

    store = layout.IndexDir.open(docs_index_dir).docstore()
    assert layout.IndexDir.open(docs_index_dir).docstore() is store  # shared while in use
    connection = store._conn
    del store
    gc.collect()
    assert not [key for key in list(layout._open_stores.keys()) if key[0] == str(docs_index_dir.resolve())]
    with pytest.raises(Exception, match="closed"):
        connection.execute("SELECT 1")


@pytest.fixture
def docs_index_dir(tmp_path):
    from ragline.engine.index.build import build_index

    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "alpha"}\n{"id": "b", "text": "beta"}\n')
    return build_index(corpus, tmp_path / "idx", {"bm25": {}}) and tmp_path / "idx"
