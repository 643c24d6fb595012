"""Block attention: prefill passages once, on their own, and reuse their KV.

A block (a passage, or the shared prefix) is prefilled alone at positions
0..l−1; its per-layer keys and values are what the cache stores. To answer,
the blocks are laid one after another: each block's keys are rotated to its
real offset (``kernels.rope_shift``), values are kept, and only the final
block (question and instruction) runs through the model, at the positions
that follow, attending to every cached token. The result equals one forward
over all the tokens with a block-diagonal mask (each block sees only itself,
the final block sees everything) and contiguous positions — exactly, for any
model; whether a model not trained for it answers as well is a separate,
measured question.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ragline.engine.errors import RaglineError
from ragline.engine.lm.cache_argument import with_cache
from ragline.generators.kv_reuse.rope_bases import has_rope_per_layer_type, layer_frequencies, per_layer_frequencies
from ragline.kernels.rope_shift import rope_shift_reference

# RoPE variants whose angle is (position × fixed frequency), so that a shift
# is one more rotation. "dynamic" and "longrope" change their frequencies
# with the sequence length: a cached key cannot be moved.
SHIFTABLE_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")


@dataclass
class BlockKV:
    """One block's cache: per layer (1, kv_heads, length, head_dim) keys and values.

    ``stacked``, when every layer has the same shape: one tensor (layers, 2,
    1, kv_heads, length, head_dim) of which ``keys`` and ``values`` are views,
    so that the block is one tensor on disk and one copy into a layout."""

    token_ids: tuple[int, ...]  # what identifies it: the block's ids (with its sink's, if it had one)
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    stacked: torch.Tensor | None = None

    @classmethod
    def of(cls, token_ids: tuple[int, ...], keys: list[torch.Tensor], values: list[torch.Tensor]) -> BlockKV:
        """The block, stacked when its layers allow (one copy of its tensors)."""
        if len({(k.shape, v.shape, k.dtype, v.dtype) for k, v in zip(keys, values)}) != 1 or keys[0].shape != values[0].shape:
            return cls(token_ids, keys, values)
        return cls.from_stacked(token_ids, torch.stack([torch.stack(pair) for pair in zip(keys, values)]))

    @classmethod
    def from_stacked(cls, token_ids: tuple[int, ...], stacked: torch.Tensor) -> BlockKV:
        return cls(token_ids, [layer[0] for layer in stacked], [layer[1] for layer in stacked], stacked)

    @property
    def length(self) -> int:
        return self.keys[0].shape[-2]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


def rotary_frequencies(model) -> torch.Tensor:
    """The model's RoPE frequencies, after refusing what cannot be shifted:
    (rotary/2,), or (layers, rotary/2) when its layers use different bases
    (``rope_bases``)."""
    model_type = getattr(model.config, "model_type", type(model).__name__)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise RaglineError(f"block attention does not support {model_type!r} models yet; "
                           f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    rotary = model.model.rotary_emb
    if has_rope_per_layer_type(rotary):
        return per_layer_frequencies(model, SHIFTABLE_ROPE_TYPES)
    rope_type = getattr(rotary, "rope_type", "default")
    if rope_type not in SHIFTABLE_ROPE_TYPES:
        raise RaglineError(f"RoPE type {rope_type!r} changes its frequencies with the sequence length; "
                           f"cached keys cannot be moved (supported: {', '.join(SHIFTABLE_ROPE_TYPES)})")
    return rotary.inv_freq.detach().float()


@torch.inference_mode()
def prefill_block(model, token_ids: Sequence[int], sink_ids: Sequence[int] = ()) -> BlockKV:
    """Run one block alone and keep its keys and values. With ``sink_ids`` the
    block is run after those tokens (an attention sink shared by every block:
    the block sees them, they are not kept) and its keys are moved back to
    start at position 0, like a block run alone."""
    from transformers import DynamicCache

    if not token_ids:
        raise RaglineError("an empty block has nothing to cache")
    ids = torch.tensor([list(sink_ids) + list(token_ids)], device=model.device)
    # A cache without the config's sliding-window layers: those keep only a
    # window's worth of keys, and a block needs them all. The mask still
    # applies each layer's window.
    cache = DynamicCache()
    model(input_ids=ids, **with_cache(model, cache), use_cache=True, logits_to_keep=1)
    return _cached_block(model, cache, 0, sink_ids, token_ids)


def _cached_block(model, cache, row: int, sink_ids: Sequence[int], token_ids: Sequence[int]) -> BlockKV:
    """Row ``row`` of a prefilled cache as a block: its tokens after the sink,
    keys moved back to start at position 0."""
    sink, end = len(sink_ids), len(sink_ids) + len(token_ids)
    keys = [layer.keys[row:row + 1, :, sink:end, :] for layer in cache.layers]
    values = [layer.values[row:row + 1, :, sink:end, :] for layer in cache.layers]
    if sink:
        inv_freq = rotary_frequencies(model)
        keys = [rope_shift_reference(k, -sink, layer_frequencies(inv_freq, i)) for i, k in enumerate(keys)]
    return BlockKV.of(tuple(sink_ids) + tuple(token_ids), keys, values)


# Blocks prefilled together pad to the longest of them: a batch takes blocks
# of similar length, so that padding costs at most this share of the real tokens.
PADDING_ALLOWED = 0.25
BATCH_TOKENS = 16_384  # padded tokens per batched forward, at most
# Only short blocks are batched: a longer one alone needs no mask, and SDPA's
# causal kernel skips the masked half of its attention, which a padded batch
# (an explicit mask) cannot (cold ask, 20 passages of ~290 tokens batched too:
# 23-25 s against 21-23 s).
BATCHED_BELOW = 64


@torch.inference_mode()
def prefill_blocks(model, blocks: Sequence[Sequence[int]], sink_ids: Sequence[int] = ()) -> list[BlockKV]:
    """``prefill_block`` for each of ``blocks``; short blocks of similar length
    in one forward (right-padded: a token never sees the padding after it, so
    each block's keys and values are its own, up to float rounding). A cold
    prompt is dozens of blocks, half of them a few tokens (the passages'
    numbers): one by one, each was a whole forward of tiny operations, which
    a second busy process on the machine slowed far more than large ones."""
    from transformers import DynamicCache

    if any(not block for block in blocks):
        raise RaglineError("an empty block has nothing to cache")
    results: list[BlockKV | None] = [None] * len(blocks)
    sink = len(sink_ids)
    short = sorted((i for i in range(len(blocks)) if len(blocks[i]) < BATCHED_BELOW), key=lambda i: len(blocks[i]))
    groups = [*_similar_lengths(short, blocks), *([i] for i in range(len(blocks)) if len(blocks[i]) >= BATCHED_BELOW)]
    for group in groups:
        if len(group) == 1:
            results[group[0]] = prefill_block(model, blocks[group[0]], sink_ids)
            continue
        width = sink + max(len(blocks[i]) for i in group)
        ids = torch.zeros((len(group), width), dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, i in enumerate(group):
            ids[row, :sink + len(blocks[i])] = torch.tensor(list(sink_ids) + list(blocks[i]))
            mask[row, :sink + len(blocks[i])] = 1
        cache = DynamicCache()
        model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), **with_cache(model, cache),
              use_cache=True, logits_to_keep=1)
        for row, i in enumerate(group):
            block = _cached_block(model, cache, row, sink_ids, blocks[i])
            if block.stacked is None:  # its own memory, not views of the whole batch's
                block = BlockKV(block.token_ids, [k.clone() for k in block.keys], [v.clone() for v in block.values])
            results[i] = block
    return results


def _similar_lengths(by_length: list[int], blocks: Sequence[Sequence[int]]):
    """Groups of block indexes (in ascending length) whose padding to their
    longest stays within ``PADDING_ALLOWED`` and ``BATCH_TOKENS``."""
    group: list[int] = []
    for i in by_length:
        candidate = group + [i]
        longest = len(blocks[i])
        real = sum(len(blocks[j]) for j in candidate)
        if group and (longest * len(candidate) > (1 + PADDING_ALLOWED) * real or longest * len(candidate) > BATCH_TOKENS):
            yield group
            candidate = [i]
        group = candidate
    if group:
        yield group


def slice_block(block: BlockKV, keep: Sequence[int], inv_freq: torch.Tensor, shift=None) -> BlockKV:
    """The tokens of a cached block at positions ``keep`` (ascending), stored as
    if they had stood at 0..len(keep)-1: each run of consecutive kept tokens
    moves back by the number of tokens dropped before it (keys rotated by
    that shift, values kept). A passage cut to a prefix of itself is exactly
    the block of the shorter passage: causal attention never saw what followed."""
    shift = shift or rope_shift_reference
    keep = list(keep)
    if keep == list(range(block.length)):
        return block
    if not keep or keep != sorted(set(keep)) or keep[-1] >= block.length:
        raise RaglineError("kept positions must be ascending, distinct and inside the block")
    device = block.keys[0].device
    index = torch.tensor(keep, device=device)
    runs = []  # (first kept slot, end slot, shift) for each run of consecutive positions
    first = 0
    for slot in range(1, len(keep) + 1):
        if slot == len(keep) or keep[slot] != keep[slot - 1] + 1:
            runs.append((first, slot, first - keep[first]))
            first = slot
    keys = []
    for layer, layer_keys in enumerate(block.keys):
        kept = layer_keys.index_select(-2, index)
        layer_freq = layer_frequencies(inv_freq, layer)
        pieces = [kept[..., a:b, :] if delta == 0 else shift(kept[..., a:b, :], delta, layer_freq) for a, b, delta in runs]
        keys.append(torch.cat(pieces, dim=-2))
    values = [layer_values.index_select(-2, index) for layer_values in block.values]
    return BlockKV(tuple(block.token_ids[i] for i in keep) if len(block.token_ids) == block.length else (), keys, values)


def assemble_cache(model, blocks: Sequence[BlockKV], inv_freq: torch.Tensor | None = None, shift=None,
                   room: int = 256):
    """A ``DynamicCache`` holding ``blocks`` one after another, each block's
    keys rotated to its offset, with ``room`` for more tokens written in place
    (``block_layout``). ``shift``: a per-block kernel (default: the layout's
    own torch rotation)."""
    from transformers import DynamicCache

    from ragline.generators.kv_reuse.block_layout import lay_out

    if not blocks:
        return DynamicCache(config=model.config)
    inv_freq = rotary_frequencies(model) if inv_freq is None else inv_freq
    return lay_out(blocks, inv_freq, room, shift).own_cache(model.config)


@torch.inference_mode()
def final_block_logits(model, cache, final_ids: Sequence[int]) -> torch.Tensor:
    """Logits (len(final_ids), vocab) of the final block run over an assembled
    cache, at the positions that follow it. The cache then holds the final
    block too, ready for decoding."""
    start = cache.get_seq_length()
    ids = torch.tensor([list(final_ids)], device=model.device)
    positions = torch.arange(start, start + len(final_ids), device=model.device)[None]
    out = model(input_ids=ids, **with_cache(model, cache), position_ids=positions, use_cache=True)
    return out.logits[0].float()


@torch.inference_mode()
def greedy_from_cache(model, cache, final_ids: Sequence[int], max_new_tokens: int,
                      eos_token_id: int | None = None) -> list[int]:
    """Greedy decoding after prefilling the final block over ``cache``."""
    logits = final_block_logits(model, cache, final_ids)
    generated = [int(logits[-1].argmax())]
    while len(generated) < max_new_tokens and generated[-1] != eos_token_id:
        position = cache.get_seq_length()
        out = model(input_ids=torch.tensor([[generated[-1]]], device=model.device), **with_cache(model, cache),
                    position_ids=torch.tensor([[position]], device=model.device), use_cache=True)
        generated.append(int(out.logits[0, -1].argmax()))
    return generated
