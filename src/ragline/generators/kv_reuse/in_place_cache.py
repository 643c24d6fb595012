"""A transformers ``DynamicCache`` whose layers grow in place.

A stock ``DynamicLayer`` concatenates its whole cache with every new token:
thousands of cached passage tokens are copied again at the question's
prefill and at every decoding step. Here each layer's keys and values are a
prefix view of a buffer with room after it, and new tokens are copied into
the room.

The buffer may be shared: an assembled block layout (``block_layout``) is
reused by question after question, and its first ``frozen`` positions must
never change. Such a layer writes past them only while it holds the layout's
``TailLease``; without it — or when the room runs out, a write would land on
frozen positions, or another cache method replaced the keys (beam reordering,
batch selection) — the layer first moves to a private buffer, so sharing can
never change what another cache sees.
"""

from __future__ import annotations

import functools

import torch


class TailLease:
    """The right to write past a shared layout's frozen positions; held by one
    cache at a time and ended when that cache is done."""

    def __init__(self, held: bool = True):
        self.held = held

    def end(self) -> None:
        self.held = False


def in_place_cache(config, key_buffers, value_buffers, length: int, frozen: int, lease: TailLease | None):
    """A ``DynamicCache`` holding ``length`` positions of the per-layer buffers
    (batch, kv_heads, capacity, head_dim). The first ``frozen`` positions are
    never written and the rest only under ``lease`` (None: the buffers are the
    cache's own). Models whose config asks for other layer kinds (sliding
    windows) get stock layers filled by copy instead."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=config)
    if any(type(layer) is not DynamicLayer for layer in cache.layers):
        for index, (keys, values) in enumerate(zip(key_buffers, value_buffers)):
            cache.update(keys[..., :length, :], values[..., :length, :], index)
        return cache
    layer = _in_place_layer_class()
    cache.layers = [layer(keys, values, length, frozen, lease) for keys, values in zip(key_buffers, value_buffers)]
    return cache


@functools.cache
def _in_place_layer_class():
    """Defined on first use: it subclasses a transformers class, and importing
    this module should not import transformers."""
    from transformers.cache_utils import DynamicLayer

    class InPlaceLayer(DynamicLayer):
        """``keys``/``values`` are always a prefix view of the buffers (or, after
        a stock method replaced them, whatever it left; the next update re-buffers)."""

        def __init__(self, key_buffer: torch.Tensor, value_buffer: torch.Tensor, length: int, frozen: int,
                     lease: TailLease | None):
            super().__init__()
            self._key_buffer, self._value_buffer = key_buffer, value_buffer
            self._frozen = frozen
            self._lease = lease  # None: the buffers are this layer's own
            self.keys, self.values = key_buffer[..., :length, :], value_buffer[..., :length, :]
            self.device = key_buffer.device
            self.is_initialized = True

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized or self.keys is None:  # after reset(): a stock layer from here on
                return super().update(key_states, value_states, *args, **kwargs)
            start = self.keys.shape[-2]
            end = start + key_states.shape[-2]
            if not self._may_write(start, end):
                self._move_to_own_buffers(end)
            self._key_buffer[..., start:end, :].copy_(key_states)
            self._value_buffer[..., start:end, :].copy_(value_states)
            self.keys, self.values = self._key_buffer[..., :end, :], self._value_buffer[..., :end, :]
            return self.keys, self.values

        def _may_write(self, start: int, end: int) -> bool:
            still_a_view = (self.keys.data_ptr() == self._key_buffer.data_ptr()
                            and self.keys.shape[:-2] == self._key_buffer.shape[:-2]
                            and self.values.data_ptr() == self._value_buffer.data_ptr())
            owned = self._lease is None or (self._lease.held and start >= self._frozen)
            return still_a_view and owned and end <= self._key_buffer.shape[-2]

        def _move_to_own_buffers(self, needed: int) -> None:
            # Room for a decoding run after this write, so that it too stays in place.
            capacity = needed + max(256, needed // 4)
            length = self.keys.shape[-2]
            shape = (*self.keys.shape[:-2], capacity, self.keys.shape[-1])
            keys = torch.empty(shape, dtype=self.keys.dtype, device=self.keys.device)
            values = torch.empty((*shape[:-1], self.values.shape[-1]), dtype=self.values.dtype,
                                 device=self.values.device)
            keys[..., :length, :].copy_(self.keys)
            values[..., :length, :].copy_(self.values)
            self._key_buffer, self._value_buffer = keys, values
            self._frozen, self._lease = 0, None
            self.keys, self.values = keys[..., :length, :], values[..., :length, :]

    return InPlaceLayer

