"""A missing extra names what to install; an installed package that fails to
import is shown as itself, with the file that raised it."""

from __future__ import annotations

import sys

import pytest

from ragline.engine.errors import MissingDependency
from ragline.engine.optional import BrokenDependency, import_optional


def test_a_missing_package_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail as if not installed
    with pytest.raises(MissingDependency, match=r"dense retrieval needs faiss: pip install 'ragline\[cpu\]'"):
        import_optional("faiss", needed_for="dense retrieval")


def test_an_unknown_missing_package_names_itself():
    with pytest.raises(MissingDependency, match="x needs ragline_no_such_package: pip install ragline_no_such_package"):
        import_optional("ragline_no_such_package.sub", needed_for="x")


def test_a_package_failing_inside_its_own_imports_is_not_called_missing(tmp_path, monkeypatch):
    # The failure that hid behind "needs sentence-transformers": a package whose
    # own import of another module breaks (here a shadowing `kernels` folder).
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    (tmp_path / "fancy_encoders").mkdir()
    (tmp_path / "fancy_encoders" / "__init__.py").write_text("from kernels import CUDAProperties\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("kernels", "fancy_encoders"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(BrokenDependency) as caught:
        import_optional("fancy_encoders", needed_for="dense retrieval")
    message = str(caught.value)
    assert "importing fancy_encoders failed in" in message
    assert str(tmp_path / "fancy_encoders" / "__init__.py") in message
    assert "cannot import name 'CUDAProperties' from 'kernels'" in message
    assert isinstance(caught.value.__cause__, ImportError)


def test_a_missing_dependency_of_an_installed_package_is_broken_not_missing(tmp_path, monkeypatch):
    (tmp_path / "half_installed.py").write_text("import ragline_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "half_installed", raising=False)
    with pytest.raises(BrokenDependency, match="No module named 'ragline_absent_dependency'"):
        import_optional("half_installed", needed_for="x")
