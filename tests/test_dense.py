import json

import numpy as np
import pytest

from ragline.engine.errors import EncoderMismatch, IndexNotFound, InputError
from ragline.engine.index.build import build_index
from ragline.engine.lm.encoders import encode_texts, load_sentence_encoder
from ragline.engine.lm.packaged import canonical_model_id
from ragline.retrievers.dense import Dense
from ragline.retrievers.faiss_index import factory_string


def test_dense_meta_and_streamed_embeddings(hybrid_index):
    meta = json.loads((hybrid_index / "dense" / "meta.json").read_text())
    assert meta["encoder"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert (meta["dim"], meta["count"], meta["metric"], meta["factory"]) == (384, 400, "inner_product", "Flat")
    vectors = np.memmap(hybrid_index / "dense" / "embeddings.f32", dtype=np.float32, mode="r").reshape(400, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_dense_search_equals_raw_faiss_and_encoder(hybrid_index, vaswani_subset):
    import faiss

    from ragline.engine.data.corpus import read_corpus

    docs = list(read_corpus(vaswani_subset))
    model = load_sentence_encoder("all-MiniLM-L6-v2")
    raw = faiss.IndexFlatIP(384)
    raw.add(encode_texts(model, [d.text for d in docs]))
    queries = ["dielectric constant of liquids", "transistor amplifier noise"]
    scores, rows = raw.search(encode_texts(model, queries), 10)

    found = Dense(str(hybrid_index), k=10).search(queries)
    for q in range(len(queries)):
        assert [pid for pid, _ in found[q]] == [docs[r].id for r in rows[q]]
        assert [s for _, s in found[q]] == pytest.approx(scores[q].tolist(), abs=1e-5)


@pytest.mark.parametrize("preset", ["hnsw", "ivfpq", "IVF4,Flat"])
def test_faiss_presets_build_and_find_the_exact_top_hit(preset, vaswani_subset, hybrid_index, tmp_path):
    out = tmp_path / preset.replace(",", "_")
    build_index(vaswani_subset, out, {"dense": {"factory": preset}})
    exact = Dense(str(hybrid_index), k=10).search(["measurement of dielectric constant"])[0]
    approx = Dense(str(out), k=10, nprobe=64, ef_search=256).search(["measurement of dielectric constant"])[0]
    assert len(approx) == 10
    # Approximate search must agree on most of the exact top 10 (a random
    # pick would share 0.25 of them); 4-bit PQ on 400 vectors is the lossiest.
    overlap = len({p for p, _ in exact} & {p for p, _ in approx})
    assert overlap >= (5 if preset == "ivfpq" else 9), (preset, overlap)


def test_ivfpq_sizes_itself_from_the_corpus():
    assert factory_string("ivfpq", 384, 1_000_000) == "IVF4000,PQ48x8"
    assert factory_string("ivfpq", 384, 400) == "IVF10,PQ48x4"
    with pytest.raises(InputError, match="at least 64"):
        factory_string("ivfpq", 384, 10)


def test_unknown_factory_string_is_a_clear_error(vaswani_subset, tmp_path):
    with pytest.raises(InputError, match="FAISS cannot build"):
        build_index(vaswani_subset, tmp_path / "bad", {"dense": {"factory": "NotAnIndex"}})
    assert not (tmp_path / "bad").exists()


def test_querying_with_another_encoder_is_refused(hybrid_index):
    stage = Dense(str(hybrid_index), encoder="sentence-transformers/all-mpnet-base-v2")
    with pytest.raises(EncoderMismatch, match="built with encoder"):
        stage.warm_up()
    # The same encoder under its short name is accepted.
    Dense(str(hybrid_index), encoder="all-MiniLM-L6-v2").warm_up()


def test_missing_index_and_missing_component(tmp_path, vaswani_bm25_index):
    with pytest.raises(IndexNotFound, match="no ragline index"):
        Dense(str(tmp_path / "nothing")).warm_up()
    with pytest.raises(IndexNotFound, match="has no dense component"):
        Dense(str(vaswani_bm25_index)).warm_up()


def test_short_and_local_model_names_canonicalise(tmp_path):
    assert canonical_model_id("all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert canonical_model_id(str(tmp_path)) == str(tmp_path.resolve())
    assert canonical_model_id("org/model") == "org/model"


def test_an_encoder_folder_changed_in_place_is_refused(tmp_path):
    """Same name, same dimension, pooling switched from mean to CLS: the index
    would rank differently, so it must not answer."""
    import json
    import shutil

    from ragline.engine.lm.packaged import packaged_model_path

    encoder = tmp_path / "encoder"
    shutil.copytree(packaged_model_path("all-MiniLM-L6-v2"), encoder)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "text": f"document number {i} about topic {i % 3}"}) + "\n"
                              for i in range(12)))
    build_index(corpus, tmp_path / "idx", {"dense": {"encoder": str(encoder)}})
    Dense(str(tmp_path / "idx")).warm_up()
    pooling = encoder / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    config.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    pooling.write_text(json.dumps(config))
    with pytest.raises(EncoderMismatch, match="has changed since index"):
        Dense(str(tmp_path / "idx")).warm_up()
