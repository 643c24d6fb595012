"""The span-attention probe as one Triton kernel (same contract as
``kernels.span_attention.span_attention_reference``).

One program per (batch, query head, probed row). Pass one streams the row's
keys in blocks — q·kᵀ, scaling, optional soft-capping, mask — keeping the
running max and normaliser of an online softmax; pass two recomputes each
block's logits, turns them into probabilities with the final max and
normaliser, and adds them onto their spans with atomic adds. Nothing of
size T is ever stored, only the (S,) output row.

On a CPU the kernel runs under the Triton interpreter: ``TRITON_INTERPRET=1``
must be set before ``triton`` is first imported.
"""

from __future__ import annotations

import functools

import torch

from ragline.kernels.triton_runtime import check_runnable, import_triton

PURPOSE = "the Triton probe"


def span_attention_triton(query: torch.Tensor, key: torch.Tensor, allowed: torch.Tensor,
                          span_ids: torch.Tensor, num_spans: int, scaling: float,
                          softcap: float | None = None, block_keys: int = 64) -> torch.Tensor:
    kernel = _compiled_kernel()
    check_runnable(query.device, PURPOSE, "use backend='torch' otherwise")
    batch, q_heads, rows, head_dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    if q_heads % kv_heads:
        raise ValueError(f"{q_heads} query heads cannot share {kv_heads} key/value heads evenly")
    query = query.contiguous()
    key = key.contiguous()
    allowed = allowed.to(torch.int8).contiguous()
    span_ids = span_ids.to(torch.int64).contiguous()
    out = torch.zeros((batch, q_heads, rows, num_spans), dtype=torch.float32, device=query.device)
    grid = (batch * q_heads * rows,)
    kernel[grid](
        query, key, allowed, span_ids, out,
        q_heads, kv_heads, rows, length, head_dim, num_spans,
        float(scaling), float(softcap or 0.0),
        HAS_SOFTCAP=softcap is not None,
        BLOCK_KEYS=block_keys,
        BLOCK_DIM=max(16, 1 << (head_dim - 1).bit_length()),
    )
    return out


@functools.cache
def _compiled_kernel():
    """Defined on first use so that importing this module never imports triton."""
    triton, tl = import_triton(PURPOSE)

    @triton.jit
    def span_attention_kernel(
        q_ptr, k_ptr, allowed_ptr, span_ptr, out_ptr,
        q_heads, kv_heads, rows, length, head_dim, num_spans,
        scaling, softcap,
        HAS_SOFTCAP: tl.constexpr, BLOCK_KEYS: tl.constexpr, BLOCK_DIM: tl.constexpr,
    ):
        program = tl.program_id(0)
        row = program % rows
        head = (program // rows) % q_heads
        b = program // (rows * q_heads)
        kv_head = head // (q_heads // kv_heads)

        dims = tl.arange(0, BLOCK_DIM)
        dim_ok = dims < head_dim
        q = tl.load(q_ptr + ((b * q_heads + head) * rows + row) * head_dim + dims, mask=dim_ok, other=0.0)
        q = q.to(tl.float32)
        k_base = k_ptr + (b * kv_heads + kv_head) * length * head_dim
        allowed_base = allowed_ptr + (b * rows + row) * length
        span_base = span_ptr + b * length
        out_base = out_ptr + ((b * q_heads + head) * rows + row) * num_spans

        running_max = float("-inf")
        running_sum = 0.0
        for start in range(0, length, BLOCK_KEYS):
            keys = start + tl.arange(0, BLOCK_KEYS)
            key_ok = keys < length
            visible = (tl.load(allowed_base + keys, mask=key_ok, other=0) != 0) & key_ok
            k = tl.load(k_base + keys[:, None] * head_dim + dims[None, :],
                        mask=key_ok[:, None] & dim_ok[None, :], other=0.0).to(tl.float32)
            logits = tl.sum(k * q[None, :], axis=1) * scaling
            if HAS_SOFTCAP:
                logits = softcap * (2.0 * tl.sigmoid(2.0 * logits / softcap) - 1.0)  # tanh
            logits = tl.where(visible, logits, float("-inf"))
            block_max = tl.max(logits, axis=0)
            new_max = tl.maximum(running_max, block_max)
            # Until a visible key has been seen the max is -inf: shift by 0 then, not by -inf (nan).
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
            running_sum = running_sum * tl.exp(running_max - shift) + tl.sum(tl.exp(logits - shift), axis=0)
            running_max = new_max

        normaliser = tl.maximum(running_sum, 1e-38)
        for start in range(0, length, BLOCK_KEYS):
            keys = start + tl.arange(0, BLOCK_KEYS)
            key_ok = keys < length
            visible = (tl.load(allowed_base + keys, mask=key_ok, other=0) != 0) & key_ok
            spans = tl.load(span_base + keys, mask=key_ok, other=-1)
            k = tl.load(k_base + keys[:, None] * head_dim + dims[None, :],
                        mask=key_ok[:, None] & dim_ok[None, :], other=0.0).to(tl.float32)
            logits = tl.sum(k * q[None, :], axis=1) * scaling
            if HAS_SOFTCAP:
                logits = softcap * (2.0 * tl.sigmoid(2.0 * logits / softcap) - 1.0)
            probs = tl.exp(logits - running_max) / normaliser
            tl.atomic_add(out_base + spans, probs, mask=visible & (spans >= 0))

    return span_attention_kernel
