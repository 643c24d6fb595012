"""CacheBlend (EuroSys 2025): block attention with a few tokens recomputed.

Blocks prefilled alone never attended to one another; their cached keys and
values differ from a full prefill's, and a stock model reads the difference
as a worse context (``kv_reuse: block``). CacheBlend recomputes the keys and
values of a small fraction of the context's tokens — those whose cached
states deviate most from a cross-attending prefill — so the blocks regain
some of their attention to each other, at a fraction of a full prefill:

1. select: the whole context runs through the first ``check_layer + 1``
   layers only (the forward stops there); the tokens whose values at
   ``check_layer`` differ most (squared distance) from the cached ones are
   chosen, ``fraction`` of them. Below that layer the two barely differ
   (layer 0 not at all: it sees no other token), as the paper observes;
2. recompute: the chosen tokens alone run through every layer at their own
   positions, attending to every context token — the cached keys and
   values, with the chosen tokens' replaced by the fresh ones, layer by
   layer, as they are computed.

The result is a new layout; the block layout it came from is not touched.
It depends on the passages and their order, not on the question (the
question comes after the context and cannot change it), so a blended layout
serves every question over the same blocks. ``fraction`` 0 is the block
layout itself; 1 recomputes every token and equals a full prefill.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence

import torch

from ragline.engine.errors import ConfigError
from ragline.engine.lm.cache_argument import with_cache
from ragline.generators.kv_reuse.block_layout import BlockLayout

# Model types whose forward takes a {layer type: mask} dict (their layers
# differ in attention window); the others take one 4D mask.
MASK_PER_LAYER_TYPE = ("gemma3_text", "qwen2", "qwen3")


# The recompute passes its own mask: a boolean one (SDPA, and ragline's CPU
# SDPA: engine/lm/grouped_attention.py) or an additive one (eager).
MASKED_IMPLEMENTATIONS = ("sdpa", "ragline_sdpa", "eager")


@torch.inference_mode()
def blend(model, layout: BlockLayout, context_ids: Sequence[int], fraction: float, check_layer: int = 1) -> BlockLayout:
    """``layout`` (the block layout of ``context_ids``) with ``fraction`` of its
    tokens recomputed (see the module docstring): a new layout that records
    which positions were recomputed and how long it took."""
    length = layout.length
    if len(context_ids) != length:
        raise ValueError(f"{len(context_ids)} context ids for a layout of {length} positions")
    count = round(fraction * length)
    if count == 0:  # nothing to recompute: the block layout as it is
        return layout
    implementation = model.config._attn_implementation
    if implementation not in MASKED_IMPLEMENTATIONS:
        raise ConfigError(f"kv_reuse blend needs the sdpa or eager attention implementation, not {implementation!r}")
    started = time.perf_counter()
    # A check layer past the model's last is its last.
    check_layer = min(check_layer, model.config.num_hidden_layers - 1)
    if count >= length:
        chosen = torch.arange(length, device=model.device)
    else:
        deviation = value_deviation(model, layout, context_ids, check_layer)
        chosen = deviation.topk(count).indices.sort().values
    blended = BlockLayout([k.clone() for k in layout.keys], [v.clone() for v in layout.values], layout.length,
                          recomputed=chosen.tolist())
    _recompute(model, blended, context_ids, chosen)
    if blended.keys[0].is_cuda:  # the recompute runs asynchronously there
        torch.cuda.synchronize(blended.keys[0].device)
    blended.blend_seconds = time.perf_counter() - started
    return blended


def value_deviation(model, layout: BlockLayout, context_ids: Sequence[int], check_layer: int) -> torch.Tensor:
    """(length,): per context token, the squared distance between the values a
    prefill of the whole context gives at ``check_layer`` and the cached ones."""
    ids = torch.tensor([list(context_ids)], device=model.device)
    cache = _capturing_cache_class()(check_layer)
    try:
        model(input_ids=ids, **with_cache(model, cache), use_cache=True, logits_to_keep=1)
    except _Captured:
        pass
    fresh = cache.captured  # (1, kv_heads, length, head_dim)
    cached = layout.values[check_layer][..., : layout.length, :]
    return (fresh.float() - cached.float()).pow(2).sum(dim=(0, 1, 3))


def _recompute(model, layout: BlockLayout, context_ids: Sequence[int], chosen: torch.Tensor) -> None:
    """Run the ``chosen`` positions through every layer over ``layout``,
    writing their fresh keys and values into it as each layer computes them."""
    ids = torch.tensor([[context_ids[i] for i in chosen.tolist()]], device=model.device)
    cache = _scatter_cache(model.config, layout, chosen)
    model(input_ids=ids, position_ids=chosen[None], **with_cache(model, cache), use_cache=True, logits_to_keep=1,
          attention_mask=_masks(model, chosen, layout.length, layout.keys[0].dtype))


def _masks(model, rows: torch.Tensor, length: int, dtype: torch.dtype):
    """Which keys each recomputed token sees: every context position up to its
    own (within the window, for a sliding-window layer) — one 4D mask, or one
    per layer type for models that take them so."""
    config = model.config
    keys = torch.arange(length, device=rows.device)[None, :]
    queries = rows[:, None]
    causal = keys <= queries

    def windowed(window):
        return causal if not window else causal & (keys > queries - window)

    def as_mask(allowed):
        if config._attn_implementation == "eager":  # eager adds its mask to the scores
            return torch.zeros(allowed.shape, dtype=dtype, device=rows.device).masked_fill(
                ~allowed, torch.finfo(dtype).min)[None, None]
        return allowed[None, None]

    window = getattr(config, "sliding_window", None)
    if config.model_type in MASK_PER_LAYER_TYPE and getattr(config, "layer_types", None):
        return {kind: as_mask(windowed(window if kind == "sliding_attention" else None))
                for kind in set(config.layer_types)}
    return as_mask(windowed(window))


class _Captured(Exception):
    """Stops the selection forward once the checked layer's values are in."""


@functools.cache
def _capturing_cache_class():
    """Defined on first use: it subclasses a transformers class."""
    from transformers import DynamicCache

    class CapturingCache(DynamicCache):
        """A plain cache that keeps one layer's values and stops the forward there."""

        def __init__(self, layer: int):
            super().__init__()
            self.layer = layer
            self.captured = None

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            if layer_idx == self.layer:
                self.captured = value_states
                raise _Captured
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    return CapturingCache


def _scatter_cache(config, layout: BlockLayout, positions: torch.Tensor):
    """A ``DynamicCache`` over the layout's context positions whose update writes
    the new tokens' keys and values at ``positions`` (not after the end) and
    returns every context position's."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    layer = _scatter_layer_class()
    cache.layers = [layer(keys, values, layout.length, positions) for keys, values in zip(layout.keys, layout.values)]
    return cache


@functools.cache
def _scatter_layer_class():
    from transformers.cache_utils import DynamicLayer

    class ScatterLayer(DynamicLayer):
        def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int, positions: torch.Tensor):
            super().__init__()
            self.keys, self.values = keys[..., :length, :], values[..., :length, :]
            self.positions = positions
            self.device = keys.device
            self.is_initialized = True

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            self.keys.index_copy_(-2, self.positions, key_states)
            self.values.index_copy_(-2, self.positions, value_states)
            return self.keys, self.values

    return ScatterLayer
