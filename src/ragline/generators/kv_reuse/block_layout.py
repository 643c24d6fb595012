"""Cached blocks laid one after another with their keys rotated into place:
the part of a block-attention prompt that does not depend on the question.

``lay_out`` allocates each layer's keys and values once, for the blocks plus
room for a question and its answer (one buffer for all layers when the
blocks are stacked: then a block is one copy), copies every block into its slot, and
rotates a layer's moved keys in one pass, with per-token cos/sin tables
computed once for all layers. The first block sits where it was cached
(offset 0) and is not rotated. A custom shift kernel (Triton on a GPU) is
applied block by block instead.

A layout can serve many questions (``layout_store``). ``open_cache`` hands
out a cache over it for one question: the question's tokens go into the room
and never into the blocks' positions, and a second, concurrent user of the
same layout gets a cache that copies the layout on its first write.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ragline.generators.kv_reuse.in_place_cache import TailLease, in_place_cache
from ragline.generators.kv_reuse.rope_bases import layer_frequencies, layer_tables
from ragline.kernels.rope_shift import rope_shift_in_place


@dataclass
class BlockLayout:
    keys: list[torch.Tensor]  # per layer (batch, kv_heads, capacity, head_dim)
    values: list[torch.Tensor]
    length: int  # the blocks' positions; the rest of the capacity is room
    copy_seconds: float = 0.0
    rotation_seconds: float = 0.0
    #: A blended layout's recomputed context positions and the time it took (``cache_blend``).
    recomputed: list[int] = field(default_factory=list)
    blend_seconds: float = 0.0
    _room_in_use: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def room(self) -> int:
        return self.keys[0].shape[-2] - self.length

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    @contextlib.contextmanager
    def open_cache(self, config) -> Iterator:
        """A ``DynamicCache`` over the layout for one question, valid inside the
        ``with``: its new tokens are written into the layout's room if no other
        open cache is using it, else into a copy."""
        owner = self._room_in_use.acquire(blocking=False)
        lease = TailLease(held=owner)
        try:
            yield in_place_cache(config, self.keys, self.values, self.length, self.length, lease)
        finally:
            lease.end()  # a cache that outlives the ``with`` copies before writing again
            if owner:
                self._room_in_use.release()

    def detached_cache(self, config):
        """A cache over the layout that copies it on its first write: safe to keep."""
        return in_place_cache(config, self.keys, self.values, self.length, self.length, TailLease(held=False))

    def own_cache(self, config):
        """A cache that takes the layout over: for a layout nobody else holds."""
        return in_place_cache(config, self.keys, self.values, self.length, 0, None)


def lay_out(blocks: Sequence, inv_freq: torch.Tensor, room: int,
            shift: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor] | None = None) -> BlockLayout:
    """``blocks`` (``block_attention.BlockKV``: per-layer keys and values of one
    block, cached at positions 0..length-1) one after another, each block's
    keys rotated by its offset with its layer's frequencies (``rope_bases``).
    ``shift``: a per-block kernel (``rope_shift_reference``'s contract); None
    rotates each layer at once with shared tables."""
    if not blocks:
        raise ValueError("nothing to lay out")
    lengths = [block.length for block in blocks]
    offsets = [sum(lengths[:i]) for i in range(len(blocks))]
    length = sum(lengths)
    device = blocks[0].keys[0].device
    moved_from = lengths[0]  # every block after the first moves
    tables = None
    if shift is None and moved_from < length:
        shifts = torch.repeat_interleave(torch.tensor(offsets[1:], device=device), torch.tensor(lengths[1:], device=device))
        tables = layer_tables(shifts, inv_freq, len(blocks[0].keys))
    copy_seconds = rotation_seconds = 0.0
    started = time.perf_counter()
    stacked = _stacked_room(blocks, length + room)
    if stacked is not None:
        # One copy per block, every layer at once (each layer's keys and values are views of the buffer).
        for block, offset in zip(blocks, offsets):
            stacked[..., offset:offset + block.length, :].copy_(block.stacked)
    copy_seconds += time.perf_counter() - started
    keys, values = [], []
    for layer in range(len(blocks[0].keys)):
        started = time.perf_counter()
        if stacked is not None:
            layer_keys, layer_values = stacked[layer, 0], stacked[layer, 1]
        else:
            layer_keys = _empty_like(blocks[0].keys[layer], length + room)
            layer_values = _empty_like(blocks[0].values[layer], length + room)
            for block, offset in zip(blocks, offsets):
                layer_keys[..., offset:offset + block.length, :].copy_(block.keys[layer])
                layer_values[..., offset:offset + block.length, :].copy_(block.values[layer])
        copied = time.perf_counter()
        if tables is not None:
            rope_shift_in_place(layer_keys[..., moved_from:length, :], *tables[layer])
        elif shift is not None:
            for block, offset in zip(blocks[1:], offsets[1:]):
                slot = layer_keys[..., offset:offset + block.length, :]
                slot.copy_(shift(slot, offset, layer_frequencies(inv_freq, layer)))
        rotation_seconds += time.perf_counter() - copied
        copy_seconds += copied - started
        keys.append(layer_keys)
        values.append(layer_values)
    return BlockLayout(keys, values, length, copy_seconds, rotation_seconds)


def _stacked_room(blocks: Sequence, capacity: int) -> torch.Tensor | None:
    """One buffer (layers, 2, 1, kv_heads, capacity, head_dim) for blocks that
    are all stacked alike; None otherwise (a sliced block, mixed shapes)."""
    shapes = {None if b.stacked is None else (b.stacked.shape[:-2], b.stacked.shape[-1], b.stacked.dtype) for b in blocks}
    if len(shapes) != 1 or None in shapes:
        return None
    sample = blocks[0].stacked
    return torch.empty((*sample.shape[:-2], capacity, sample.shape[-1]), dtype=sample.dtype, device=sample.device)


def _empty_like(sample: torch.Tensor, capacity: int) -> torch.Tensor:
    return torch.empty((*sample.shape[:-2], capacity, sample.shape[-1]), dtype=sample.dtype, device=sample.device)
