"""RoPE re-encoding of cached keys as one Triton kernel (same contract as
``kernels.rope_shift.rope_shift_reference``, for a shift that is the same
for every token, which is what placing a cached block needs).

One program per (row of keys): it loads the row's two rotary halves,
computes cos and sin of Δ·θ in float32 and writes the rotated row; the
dimensions past the rotary part are copied. On a CPU it runs under the
Triton interpreter (``TRITON_INTERPRET=1`` before triton is imported).
"""

from __future__ import annotations

import functools

import torch

from ragline.kernels.triton_runtime import check_runnable, import_triton

PURPOSE = "the Triton RoPE shift"


def rope_shift_triton(keys: torch.Tensor, shift: int, inv_freq: torch.Tensor) -> torch.Tensor:
    kernel = _compiled_kernel()
    check_runnable(keys.device, PURPOSE, "use the torch reference otherwise")
    head_dim = keys.shape[-1]
    half = inv_freq.shape[0]
    if 2 * half > head_dim:
        raise ValueError(f"{2 * half} rotary dimensions do not fit a head of {head_dim}")
    rows = keys.reshape(-1, head_dim).contiguous()
    out = torch.empty_like(rows)
    kernel[(rows.shape[0],)](
        rows, out, inv_freq.to(device=keys.device, dtype=torch.float32).contiguous(), float(shift),
        head_dim, half,
        BLOCK_HALF=max(16, 1 << (half - 1).bit_length()),
        BLOCK_DIM=max(16, 1 << (head_dim - 1).bit_length()),
    )
    return out.reshape(keys.shape)


@functools.cache
def _compiled_kernel():
    """Defined on first use so that importing this module never imports triton."""
    triton, tl = import_triton(PURPOSE)

    @triton.jit
    def rope_shift_kernel(keys_ptr, out_ptr, inv_freq_ptr, shift, head_dim, half,
                          BLOCK_HALF: tl.constexpr, BLOCK_DIM: tl.constexpr):
        row = tl.program_id(0)
        base = row * head_dim
        # Everything past the rotary part is copied unchanged first.
        dims = tl.arange(0, BLOCK_DIM)
        rest = (dims >= 2 * half) & (dims < head_dim)
        tl.store(out_ptr + base + dims, tl.load(keys_ptr + base + dims, mask=rest, other=0.0), mask=rest)

        pairs = tl.arange(0, BLOCK_HALF)
        in_half = pairs < half
        theta = tl.load(inv_freq_ptr + pairs, mask=in_half, other=0.0) * shift
        cos, sin = tl.cos(theta), tl.sin(theta)
        first = tl.load(keys_ptr + base + pairs, mask=in_half, other=0.0)
        second = tl.load(keys_ptr + base + half + pairs, mask=in_half, other=0.0)
        dtype = first.dtype
        first, second = first.to(tl.float32), second.to(tl.float32)
        tl.store(out_ptr + base + pairs, (first * cos - second * sin).to(dtype), mask=in_half)
        tl.store(out_ptr + base + half + pairs, (second * cos + first * sin).to(dtype), mask=in_half)

    return rope_shift_kernel
