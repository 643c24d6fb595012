"""What every Triton kernel here needs before it runs: triton itself
(imported on first use, so importing a kernel module never imports it), a
device it can run on, and the rule for when ``auto`` picks Triton."""

from __future__ import annotations

import importlib.util
import os

import torch

from ragline.kernels.errors import KernelUnavailable


def import_triton(purpose: str):
    """(triton, triton.language); ``purpose`` names the kernel in the error."""
    try:
        import triton
        import triton.language as tl
    except ModuleNotFoundError as err:
        if err.name != "triton":
            raise  # installed, and failing to import: shown as itself, not as "missing"
        raise KernelUnavailable(f"{purpose} needs the 'triton' package (pip install 'ragline[kernels]')") from None
    return triton, tl


def check_runnable(device: torch.device, purpose: str, otherwise: str) -> None:
    """Triton runs on CUDA, or on the CPU under its interpreter."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise KernelUnavailable(f"{purpose} needs a CUDA device, or TRITON_INTERPRET=1 set before "
                           f"triton is imported to run it on the CPU; {otherwise}")


def prefer_triton(device: torch.device) -> bool:
    """What ``auto`` means: the Triton kernel on a GPU where triton is installed."""
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None
