"""Assembled block layouts kept between questions.

Laying out a prompt's cached blocks (copying them into one buffer per layer
and rotating their keys) depends only on which blocks stand in which order:
the same passages retrieved again, for another question or another user,
need none of it. Layouts are keyed by their blocks' store keys and kept
positions, in order — another order, another pruning or another sink is
another key, so a stale layout can never be found. Least recently used
layouts go first once ``max_bytes`` is exceeded (a 20-passage SmolLM2 layout
is ~0.2 GB in fp32); ``max_bytes=0`` keeps none. One lock guards the map;
each layout guards its own room (``BlockLayout.open_cache``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from ragline.generators.kv_reuse.block_layout import BlockLayout


class LayoutStore:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._layouts: OrderedDict[Hashable, BlockLayout] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    @property
    def bytes_held(self) -> int:
        return self._held

    def get(self, key: Hashable) -> BlockLayout | None:
        with self._lock:
            layout = self._layouts.get(key)
            if layout is not None:
                self._layouts.move_to_end(key)
            return layout

    def put(self, key: Hashable, layout: BlockLayout) -> None:
        if layout.nbytes > self.max_bytes:
            return
        with self._lock:
            previous = self._layouts.pop(key, None)
            if previous is not None:
                self._held -= previous.nbytes
            self._layouts[key] = layout
            self._held += layout.nbytes
            while self._held > self.max_bytes:
                _, evicted = self._layouts.popitem(last=False)
                self._held -= evicted.nbytes
