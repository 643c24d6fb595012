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

``rope_shift_reference`` returns new keys. Moving many blocks at once (a
prompt's layout) uses ``rope_tables`` — cos and sin per token, computed once
and shared by every layer — and ``rope_shift_in_place``, which rotates keys
where they already lie.
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


def rope_tables(shifts: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of ``shifts`` × θ, (T, rotary/2) in float32: one row per token,
    computed once and shared by every layer that moves the same tokens."""
    angles = shifts.to(torch.float32)[:, None] * inv_freq.to(device=shifts.device, dtype=torch.float32)[None, :]
    return angles.cos(), angles.sin()


def rope_shift_in_place(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """``rope_shift_reference`` with per-token tables from ``rope_tables``, written
    back into ``keys`` (which may be a view into a larger buffer): no new tensor
    the size of the keys, one pass per half. Keys of another dtype are rotated in
    a float32 copy and cast back once, as the reference does."""
    half = cos.shape[-1]
    if 2 * half > keys.shape[-1]:
        raise ValueError(f"{2 * half} rotary dimensions do not fit a head of {keys.shape[-1]}")
    if keys.dtype != torch.float32:
        rotated = keys[..., : 2 * half].float()
        rope_shift_in_place(rotated, cos, sin)
        keys[..., : 2 * half].copy_(rotated)
        return
    first, second = keys[..., :half], keys[..., half : 2 * half]
    saved_first = first.clone()  # both halves of the result read the original first half
    # rotate_half convention: (x1, x2) → (x1·cos − x2·sin, x2·cos + x1·sin)
    first.mul_(cos).addcmul_(second, sin, value=-1)
    second.mul_(cos).addcmul_(saved_first, sin)
