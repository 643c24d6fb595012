"""Attention paid by a few query rows to spans of keys, without an n×n matrix.

The attention probe needs, per layer and head, the softmax row of a handful
of query positions (normalised over every key the model lets them see), summed
onto spans of the sequence (sentences, passages, single tokens). This module
is the plain-torch reference: it walks the keys in chunks with an online
softmax, so memory is O(P·chunk + P·S) per head whatever the sequence length.
``kernels.span_attention_triton`` computes the same thing in one fused kernel.

Shapes (B batch, Hq query heads, Hkv key/value heads, P probed rows,
T keys, D head size, S spans):

- ``query``: (B, Hq, P, D), post-RoPE query rows of the probed positions;
- ``key``: (B, Hkv, T, D), post-RoPE keys, before GQA head repetition;
- ``allowed``: (B, P, T) bool, which keys each probed row may attend to
  (causality, padding, sliding windows: the model's own mask rows);
- ``span_ids``: (B, T) int64, the span of each key, -1 for keys in no span.

The result is (B, Hq, P, S) float32: attention mass per span.
"""

from __future__ import annotations

import torch


def causal_rows(query_positions: torch.Tensor, length: int, sliding_window: int | None = None,
                key_mask: torch.Tensor | None = None, batch: int = 1) -> torch.Tensor:
    """``allowed`` for a plain causal model: row p sees keys 0..pos[p] (the last
    ``sliding_window`` of them on a sliding layer), minus padding."""
    keys = torch.arange(length, device=query_positions.device)
    pos = query_positions[:, None]
    allowed = keys[None, :] <= pos
    if sliding_window is not None:
        allowed &= pos - keys[None, :] < sliding_window
    allowed = allowed.unsqueeze(0).expand(batch, -1, -1)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, :].bool()
    return allowed


def span_attention_reference(query: torch.Tensor, key: torch.Tensor, allowed: torch.Tensor,
                             span_ids: torch.Tensor, num_spans: int, scaling: float,
                             softcap: float | None = None, key_chunk: int = 1024) -> torch.Tensor:
    batch, q_heads, rows, _ = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    if q_heads % kv_heads:
        raise ValueError(f"{q_heads} query heads cannot share {kv_heads} key/value heads evenly")
    group = q_heads // kv_heads
    # Grouped-query attention: query head h reads key head h // group.
    q = query.float().reshape(batch, kv_heads, group * rows, -1)
    running_max = q.new_full((batch, kv_heads, group * rows), float("-inf"))
    running_sum = q.new_zeros((batch, kv_heads, group * rows))
    pooled = q.new_zeros((batch, kv_heads, group * rows, num_spans))

    for start in range(0, length, key_chunk):
        stop = min(length, start + key_chunk)
        logits = torch.einsum("bgrd,bgtd->bgrt", q, key[:, :, start:stop].float()) * scaling
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        visible = allowed[:, None, :, start:stop].repeat(1, 1, group, 1)  # (B, 1, group*P, C)
        logits = logits.masked_fill(~visible, float("-inf"))

        new_max = torch.maximum(running_max, logits.amax(dim=-1))
        # Rows that have seen no visible key yet keep -inf; shift by 0 there to avoid nan.
        safe_max = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)
        rescale = torch.exp(running_max - safe_max)
        weights = torch.exp(logits - safe_max[..., None])

        running_sum = running_sum * rescale + weights.sum(dim=-1)
        pooled *= rescale[..., None]
        pooled += _pool_onto_spans(weights, span_ids[:, start:stop], num_spans)
        running_max = new_max

    pooled /= running_sum.clamp_min(torch.finfo(pooled.dtype).tiny)[..., None]
    return pooled.reshape(batch, q_heads, rows, num_spans)


def _pool_onto_spans(weights: torch.Tensor, span_ids: torch.Tensor, num_spans: int) -> torch.Tensor:
    """Sum the last axis of ``weights`` (B, G, R, C) into spans given per key (B, C)."""
    batch, heads, rows, chunk = weights.shape
    in_span = span_ids >= 0
    # Keys outside every span go to an extra bucket that is dropped.
    target = torch.where(in_span, span_ids, torch.full_like(span_ids, num_spans))
    out = weights.new_zeros((batch, heads, rows, num_spans + 1))
    out.scatter_add_(-1, target[:, None, None, :].expand(batch, heads, rows, chunk), weights)
    return out[..., :num_spans]
