"""Nothing ragline caches on disk is used before its checksum is checked: a
KV block, a converted model and an ONNX export whose bytes changed are
recomputed (and logged), an artifact a user trained is refused with its file
name."""

from __future__ import annotations

import json
import logging
import types
from pathlib import Path

import pytest
import torch

from ragline.engine.artifacts import read_artifact, write_artifact
from ragline.engine.errors import InputError
from ragline.engine.integrity import MANIFEST, damage_in, write_manifest
from ragline.generators.kv_reuse.block_attention import BlockKV
from ragline.generators.kv_reuse.block_store import BlockStore


def flip_middle(path: Path, size: int = 4096) -> None:
    """``size`` bytes in the middle of the file inverted; its length unchanged."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + size] = bytes(b ^ 0xFF for b in data[middle:middle + size])
    path.write_bytes(bytes(data))


def a_block(token_ids=(1, 2, 3, 4, 5, 6, 7, 8)) -> BlockKV:
    generator = torch.Generator().manual_seed(0)
    shape = (1, 3, len(token_ids), 64)
    return BlockKV(tuple(token_ids), [torch.randn(shape, generator=generator) for _ in range(4)],
                   [torch.randn(shape, generator=generator) for _ in range(4)])


def test_a_kv_block_damaged_on_disk_is_discarded_and_recomputed(tmp_path, caplog):
    block = a_block()
    BlockStore("m", directory=tmp_path).get_or_compute(block.token_ids, lambda: block)
    (path,) = tmp_path.rglob("*.safetensors")
    flip_middle(path)  # the same size: only the checksum can tell

    computed = []
    store = BlockStore("m", directory=tmp_path)
    with caplog.at_level(logging.WARNING):
        again = store.get_or_compute(block.token_ids, lambda: computed.append(1) or block)
    assert computed == [1] and store.stats["discarded"] == 1 and store.stats["disk_hits"] == 0
    assert "checksum does not match" in caplog.text and str(path) in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(again.keys, block.keys))
    # Written again, whole: the next process reads it from disk.
    fresh = BlockStore("m", directory=tmp_path)
    read = fresh.get_or_compute(block.token_ids, lambda: pytest.fail("recomputed an intact block"))
    assert fresh.stats["disk_hits"] == 1 and all(torch.equal(a, b) for a, b in zip(read.values, block.values))


def test_without_the_check_the_damage_would_be_used(tmp_path):
    # What the checksum is for: the damaged file still parses.
    block = a_block()
    BlockStore("m", directory=tmp_path).get_or_compute(block.token_ids, lambda: block)
    flip_middle(next(tmp_path.rglob("*.safetensors")))
    unchecked = BlockStore("m", directory=tmp_path, verify=False)
    read = unchecked.get_or_compute(block.token_ids, lambda: pytest.fail("should have read the file"))
    assert unchecked.stats["disk_hits"] == 1
    assert not all(torch.equal(a, b) for a, b in zip([*read.keys, *read.values], [*block.keys, *block.values]))


def test_a_block_written_without_a_checksum_is_recomputed(tmp_path):
    from safetensors.torch import load_file, save_file

    block = a_block()
    BlockStore("m", directory=tmp_path).get_or_compute(block.token_ids, lambda: block)
    path = next(tmp_path.rglob("*.safetensors"))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = {k: v for k, v in handle.metadata().items() if k != "digest"}
    save_file(load_file(str(path)), str(path), metadata=meta)
    store = BlockStore("m", directory=tmp_path)
    store.get_or_compute(block.token_ids, lambda: block)
    assert store.stats["discarded"] == 1


def test_an_artifact_changed_after_it_was_written_is_refused_with_its_name(tmp_path):
    path = tmp_path / "probe.json"
    write_artifact(path, "ragline-test/1", {"coef": [0.5, 0.25], "layers": 2})
    assert read_artifact(path, "ragline-test/1", "test probe", "make it") == {"coef": [0.5, 0.25], "layers": 2}
    data = json.loads(path.read_text())
    data["coef"][0] = 0.75
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"probe.json: this test probe was changed or damaged after it was written "
                                         r"\(its checksum does not match\); make it again with 'make it'"):
        read_artifact(path, "ragline-test/1", "test probe", "make it")
    del data["checksum"]  # written before artifacts carried checksums: read as before
    path.write_text(json.dumps(data))
    assert read_artifact(path, "ragline-test/1", "test probe", "make it")["coef"] == [0.75, 0.25]


def counted_conversion(tmp_path, monkeypatch):
    """A model cache of its own and a conversion that counts its runs."""
    from ragline.engine.lm import packaged

    monkeypatch.setenv("RAGLINE_CACHE", str(tmp_path))
    monkeypatch.setattr(packaged, "_verified", set())
    conversions = []

    def convert(folder: Path) -> None:
        conversions.append(folder)
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(bytes(range(256)) * 64)

    return conversions, convert


def test_a_converted_model_damaged_in_the_cache_is_converted_again(tmp_path, monkeypatch, caplog):
    from ragline.engine.lm import packaged

    conversions, convert = counted_conversion(tmp_path, monkeypatch)
    folder = packaged._once_into_cache("test/tiny", convert)
    assert len(conversions) == 1 and damage_in(folder) is None and (folder / MANIFEST).is_file()
    assert packaged._once_into_cache("test/tiny", convert) == folder and len(conversions) == 1
    flip_middle(folder / "model.safetensors", 16)
    packaged._verified.clear()  # a new process: a folder is checked once per process
    with caplog.at_level(logging.WARNING):
        assert packaged._once_into_cache("test/tiny", convert) == folder
    assert len(conversions) == 2 and "model.safetensors does not match its checksum" in caplog.text
    assert (folder / "model.safetensors").read_bytes() == bytes(range(256)) * 64


def test_a_model_an_earlier_conversion_made_is_converted_again(tmp_path, monkeypatch, caplog):
    from ragline.engine.lm import packaged

    conversions, convert = counted_conversion(tmp_path, monkeypatch)
    folder = packaged._once_into_cache("test/tiny", convert)
    assert (folder / packaged.CONVERSION_FILE).read_text().strip() == str(packaged.CONVERSION)
    (folder / packaged.CONVERSION_FILE).unlink()  # as a ragline from before conversions were numbered left it
    write_manifest(folder)
    with caplog.at_level(logging.WARNING):
        assert packaged._once_into_cache("test/tiny", convert) == folder
    assert len(conversions) == 2 and "made by an earlier ragline (conversion 1" in caplog.text
    assert (folder / packaged.CONVERSION_FILE).is_file() and damage_in(folder) is None
    assert packaged._once_into_cache("test/tiny", convert) == folder and len(conversions) == 2


def test_a_converted_tokenizer_adds_bos_where_its_gguf_says_so(tmp_path):
    import gguf

    from ragline.engine.lm import packaged

    def gguf_saying(add_bos: bool) -> Path:
        path = tmp_path / f"bos-{add_bos}.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_add_bos_token(add_bos)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path

    tokenizer = types.SimpleNamespace(add_bos_token=False, add_eos_token=False)
    packaged._follow_gguf_special_tokens(tokenizer, gguf_saying(True))
    assert tokenizer.add_bos_token is True and tokenizer.add_eos_token is False  # the GGUF is silent on EOS
    packaged._follow_gguf_special_tokens(tokenizer, gguf_saying(False))
    assert tokenizer.add_bos_token is False


def test_an_onnx_export_damaged_in_the_cache_is_exported_again(tmp_path, monkeypatch, caplog):
    from ragline.engine.lm import onnx_encoder

    monkeypatch.setenv("RAGLINE_CACHE", str(tmp_path))
    exports = []

    def export(encoder, folder: Path) -> None:
        exports.append(folder)
        for name in (onnx_encoder.FP32_FILE, onnx_encoder.INT8_FILE):
            (folder / name).write_bytes(b"onnx graph " * 500)

    monkeypatch.setattr(onnx_encoder, "_export", export)
    model = torch.nn.Linear(2, 2)
    model.config = types.SimpleNamespace(to_json_string=lambda: "{}")
    encoder = [types.SimpleNamespace(auto_model=model)]
    folder = onnx_encoder.exported_model(encoder)
    assert onnx_encoder.exported_model(encoder) == folder and len(exports) == 1
    flip_middle(folder / onnx_encoder.INT8_FILE, 64)
    with caplog.at_level(logging.WARNING):
        assert onnx_encoder.exported_model(encoder) == folder
    assert len(exports) == 2 and "model_int8.onnx does not match its checksum" in caplog.text
    assert damage_in(folder) is None


def test_a_manifest_names_what_is_missing(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x")
    assert damage_in(tmp_path) == f"it has no readable {MANIFEST}"
    write_manifest(tmp_path)
    assert damage_in(tmp_path) is None
    (tmp_path / "a.bin").unlink()
    assert damage_in(tmp_path) == "a.bin is missing"
