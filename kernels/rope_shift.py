"""Moving cached keys to another position: RoPE re-encoding.

A key cached at position p holds R(p)·k (RoPE rotates each pair of
dimensions by p·θᵢ). Placing it at p + Δ only needs R(Δ) applied on top,
since R(Δ)·R(p) = R(p + Δ); values carry no position and stay as they are.
The rotation uses the model's own frequencies θ (``inv_freq``, which already
holds linear or llama3 scaling) and transformers' layout (``rotate_half``:
dimension i pairs with i + d/2). A model whose RoPE multiplies cos and sin by
an attention factor (yarn) has that factor in the cached key once already,
so the shift rotates with plain cos and sin. Computed in float32; the result
is cast back to the keys' dtype.

Shapes: ``keys`` (..., T, head_dim); ``shift`` an int (same Δ for every
token) or a (T,) tensor; ``inv_freq`` (rotary_dim / 2,). Partial rotary
embeddings (rotary_dim < head_dim) rotate the first rotary_dim dimensions.
"""

from __future__ import annotations

import torch


def rope_shift_reference(keys: torch.Tensor, shift: int | torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    rotary = 2 * inv_freq.shape[0]
    if rotary > keys.shape[-1]:
        raise ValueError(f"{rotary} rotary dimensions do not fit a head of {keys.shape[-1]}")
    delta = torch.as_tensor(shift, dtype=torch.float32, device=keys.device)
    # One shift for every token needs one row of angles, broadcast over T:
    # the trigonometry then costs rotary/2 values, not T × rotary/2.
    delta = delta.reshape(1) if delta.ndim == 0 else delta
    angles = delta[:, None] * inv_freq.to(device=keys.device, dtype=torch.float32)[None, :]  # (T or 1, rotary/2)
    cos, sin = angles.cos(), angles.sin()
    k = keys.float()
    first, second = k[..., : rotary // 2], k[..., rotary // 2 : rotary]
    # rotate_half convention: (x1, x2) → (x1·cos − x2·sin, x2·cos + x1·sin)
    rotated = torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)
    return torch.cat([rotated, k[..., rotary:]], dim=-1).to(keys.dtype)
