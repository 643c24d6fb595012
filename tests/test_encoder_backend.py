"""The ONNX Runtime encoder backends (engine/lm/onnx_encoder.py): the same
embeddings as torch, recorded by the index that used them, used again for its
queries and updates, and exported once into the model cache."""

import itertools
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ragline.engine.data.corpus import read_corpus
from ragline.engine.errors import ConfigError, EncoderMismatch
from ragline.engine.index.build import build_index
from ragline.engine.index.index import Index
from ragline.engine.lm import model_cache, onnx_encoder
from ragline.engine.lm.encoders import encode_texts, load_sentence_encoder
from ragline.engine.lm.packaged import resolve_model_source
from ragline.engine.types import Document
from ragline.retrievers.dense import Dense, DenseIndexBuilder

ENCODER = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """A model cache of this module's own, so the first ONNX load exports
    (~10 s) and every later one, in this process or a child, reuses it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAGLINE_CACHE", str(tmp_path_factory.mktemp("cache")))
        model_cache.clear()
        load_sentence_encoder(ENCODER, backend="onnx")
        yield
        model_cache.clear()


@pytest.fixture(scope="module")
def texts(vaswani) -> list[str]:
    """Real texts of both kinds an encoder sees: 48 abstracts and 12 queries."""
    from ragline.engine.data.topics import read_topics

    documents = [d.text for d in itertools.islice(read_corpus(vaswani / "doc-text.trec"), 48)]
    return documents + [text for _, text in read_topics(vaswani / "query-text.trec")[:12]]


@pytest.fixture(scope="module")
def onnx_index(onnx_cache, texts, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-index")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts[:48])))
    build_index(corpus, root / "idx", {"dense": {"encoder": ENCODER, "backend": "onnx"}})
    return root / "idx"


def test_onnx_embeddings_match_torch_text_by_text(onnx_cache, texts):
    torch_vectors = encode_texts(load_sentence_encoder(ENCODER, backend="torch"), texts)
    fp32 = encode_texts(load_sentence_encoder(ENCODER, backend="onnx"), texts)
    int8 = encode_texts(load_sentence_encoder(ENCODER, backend="onnx-int8"), texts)
    assert fp32.shape == torch_vectors.shape == (60, 384)
    assert np.allclose(np.linalg.norm(fp32, axis=1), 1.0, atol=1e-5)
    assert (fp32 * torch_vectors).sum(axis=1).min() >= 0.999
    # int8 trades a little: >= 0.993 on Vaswani abstracts (0.95 on average with one scale per tensor).
    assert (int8 * torch_vectors).sum(axis=1).min() >= 0.985


def test_index_records_the_backend_and_encodes_queries_through_it(onnx_index, texts):
    meta = json.loads((onnx_index / "meta.json").read_text())
    assert meta["components"]["dense"]["encoder_backend"] == "onnx"
    assert json.loads((onnx_index / "dense" / "meta.json").read_text())["encoder_backend"] == "onnx"

    dense = Dense(str(onnx_index), k=5)
    found = dense.search([texts[3]])[0]
    assert found[0][0] == "d3"
    assert isinstance(dense._model[0].auto_model, onnx_encoder.OnnxTransformer)
    assert Dense(str(onnx_index), k=5, backend="onnx").search([texts[3]])[0] == found


@pytest.mark.parametrize("other", ["torch", "onnx-int8"])
def test_querying_with_another_backend_is_refused(onnx_index, other):
    with pytest.raises(EncoderMismatch, match=f"built with encoder backend 'onnx', not '{other}'"):
        Dense(str(onnx_index), backend=other).search(["thin films"])


def test_an_update_keeps_the_backend(onnx_index, tmp_path):
    index = tmp_path / "idx"
    shutil.copytree(onnx_index, index)
    meta = Index(index).add([Document("new", "electron spin resonance in thin magnetic films")])
    assert meta["components"]["dense"]["encoder_backend"] == "onnx"
    assert Dense(str(index), k=1).search(["electron spin resonance in thin magnetic films"])[0][0][0] == "new"


def test_the_export_is_made_once_and_reused(onnx_cache, monkeypatch):
    folder = load_sentence_encoder(ENCODER, backend="onnx")[0].auto_model.path.parent
    written = {f.name: f.stat().st_mtime_ns for f in folder.iterdir()}
    assert {onnx_encoder.FP32_FILE, onnx_encoder.INT8_FILE} <= set(written)

    def export_again(*_):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_encoder, "_export", export_again)
    model_cache.clear()  # a new load, as in a new process
    model = load_sentence_encoder(ENCODER, backend="onnx")
    assert model[0].auto_model.path == folder / onnx_encoder.FP32_FILE
    assert {f.name: f.stat().st_mtime_ns for f in folder.iterdir()} == written


def test_the_export_has_eager_attention_without_the_sdpa_nan_guard(onnx_cache):
    import onnx

    folder = load_sentence_encoder(ENCODER, backend="onnx")[0].auto_model.path.parent
    for name in (onnx_encoder.FP32_FILE, onnx_encoder.INT8_FILE):
        operators = {node.op_type for node in onnx.load(str(folder / name), load_external_data=False).graph.node}
        assert "Softmax" in operators and "IsNaN" not in operators, name


def test_a_changed_encoder_is_still_refused(onnx_cache, texts, tmp_path):
    encoder = tmp_path / "encoder"
    shutil.copytree(resolve_model_source(ENCODER), encoder)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts[:8])))
    build_index(corpus, tmp_path / "idx", {"dense": {"encoder": str(encoder), "backend": "onnx"}})
    config = json.loads((encoder / "config.json").read_text())
    (encoder / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-5}))
    with pytest.raises(EncoderMismatch, match="has changed"):
        Dense(str(tmp_path / "idx")).search(["thin films"])


def test_bad_backends_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown encoder backend 'tensorrt': choose one of torch, onnx, onnx-int8"):
        DenseIndexBuilder(backend="tensorrt")
    with pytest.raises(ConfigError, match="unknown encoder backend"):
        Dense("idx", backend="openvino")
    with pytest.raises(ConfigError, match="runs on the CPU"):
        load_sentence_encoder(ENCODER, device="cuda", backend="onnx")


def test_cli_builds_with_the_backend_and_refuses_unknown_ones(onnx_cache, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("Dielectric constants of polar liquids at microwave frequencies.\n")

    def ragline(*args):
        return subprocess.run([sys.executable, "-m", "ragline.cli", *map(str, args)], capture_output=True, text=True, timeout=600)

    result = ragline("index", tmp_path / "docs", "--out", tmp_path / "idx", "--dense", ENCODER, "--encoder-backend", "onnx-int8")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "idx" / "dense" / "meta.json").read_text())["encoder_backend"] == "onnx-int8"

    result = ragline("index", tmp_path / "docs", "--out", tmp_path / "bad", "--encoder-backend", "gpu")
    assert result.returncode == 2
    assert "unknown encoder backend 'gpu': choose one of torch, onnx, onnx-int8" in result.stderr
