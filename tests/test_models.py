import io
import zipfile
from pathlib import Path

from ragline.engine.lm import packaged as models


class FakeDistribution:
    """An installed distribution holding one file, ``part``, listed under ``listed_as``."""

    def __init__(self, part: Path, listed_as: str | None = None):
        self.part = part
        self.files = [Path(listed_as or f"pkg/input/model.zip.{part.suffix[1:]}")]

    def locate_file(self, _):
        return self.part


def test_split_zip_model_is_assembled_once_into_the_cache(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("tiny-model/config.json", '{"model_type": "bert"}')
        z.writestr("tiny-model/1_Pooling/config.json", "{}")
    blob = buffer.getvalue()
    parts = []
    for i, start in enumerate(range(0, len(blob), 100), 1):
        part = tmp_path / f"model.zip.{i:03d}"
        part.write_bytes(blob[start : start + 100])
        parts.append(part)
    fake = {f"dist-{i}": FakeDistribution(p) for i, p in enumerate(parts)}
    monkeypatch.setattr(models.metadata, "distribution", lambda name: fake[name])
    monkeypatch.setenv("RAGLINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(models.PACKAGED, "org/tiny-model", models.SplitZip(tuple(fake), "tiny-model"))

    path = models.packaged_model_path("org/tiny-model")
    assert path == tmp_path / "cache" / "models" / "org--tiny-model"
    assert (path / "config.json").read_text() == '{"model_type": "bert"}' and (path / "1_Pooling").is_dir()
    assert not (path / "model.zip").exists()
    parts[0].unlink()  # a second call must not need the parts again
    assert models.packaged_model_path("org/tiny-model") == path
    assert models.resolve_model_source("org/tiny-model") == str(path)


def test_missing_split_package_means_no_packaged_copy(monkeypatch):
    def missing(name):
        raise models.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.metadata, "distribution", missing)
    monkeypatch.setenv("RAGLINE_CACHE", "/nonexistent-cache")
    assert models.packaged_model_path("all-mpnet-base-v2") is None
    assert models.resolve_model_source("all-mpnet-base-v2") == "sentence-transformers/all-mpnet-base-v2"


def test_one_table_of_short_names_serves_encoders_and_language_models():
    assert models.canonical_model_id("all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert models.canonical_model_id("ALL-MINILM-L6-V2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert models.canonical_model_id("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert models.canonical_model_id("org/unknown") == "org/unknown"


def gguf_parts(tmp_path: Path, monkeypatch, blob: bytes) -> tuple[str, ...]:
    parts = []
    for i, start in enumerate(range(0, len(blob), 10), 1):
        part = tmp_path / f"part{i:02d}.bin"
        part.write_bytes(blob[start : start + 10])
        parts.append(part)
    fake = {f"dist-part{i}": FakeDistribution(p, f"pkg/data/{p.name}") for i, p in enumerate(parts, 1)}
    monkeypatch.setattr(models.metadata, "distribution", lambda name: fake[name])
    return tuple(fake)


def test_joined_gguf_parts_that_are_not_the_pinned_file_are_refused_and_leave_nothing(tmp_path, monkeypatch):
    import hashlib

    import pytest

    from ragline.engine.errors import RaglineError

    blob = b"GGUF" + bytes(range(40))
    names = gguf_parts(tmp_path, monkeypatch, blob)
    monkeypatch.setenv("RAGLINE_CACHE", str(tmp_path / "cache"))
    converted = []
    monkeypatch.setattr(models, "_convert_gguf", lambda gguf, tmp: converted.append(gguf.read_bytes()))
    pinned = models.PartsGGUF(names, sha256=hashlib.sha256(blob).hexdigest(), size=len(blob))
    monkeypatch.setitem(models.PACKAGED, "org/parts-model", pinned)
    (tmp_path / "part03.bin").write_bytes(b"x" * 10)  # one part changed, same size
    with pytest.raises(RaglineError, match="join into 44 bytes with SHA-256 .*expected 44 bytes"):
        models.packaged_model_path("org/parts-model")
    assert converted == [] and not (tmp_path / "cache" / "models" / "org--parts-model").exists()

    (tmp_path / "part03.bin").write_bytes(blob[20:30])  # put back: joined in order, checked, converted
    assert models.packaged_model_path("org/parts-model") == tmp_path / "cache" / "models" / "org--parts-model"
    assert converted == [blob]


def test_qwen_has_its_short_name():
    assert models.canonical_model_id("qwen2.5-coder-1.5b") == "Qwen/Qwen2.5-Coder-1.5B-Instruct"
    assert models.canonical_model_id("Qwen2.5-Coder-1.5B-Instruct") == "Qwen/Qwen2.5-Coder-1.5B-Instruct"
