"""One loaded copy of each model per process, shared by every stage.

A pipeline with attention sorting and generation on the same language model,
or a dense retriever and an embedding compressor on the same encoder, holds
one copy, not two. Entries are keyed by (kind, canonical model id, device,
dtype); a load runs once even when several threads ask at the same time.
``clear()`` drops every entry (tests, long-lived processes switching models).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_lock = threading.Lock()
_loaded: dict[tuple, Any] = {}
_loading: dict[tuple, threading.Lock] = {}


def shared(key: tuple, load: Callable[[], Any]) -> Any:
    """The object cached under ``key``, loading it with ``load()`` on first use."""
    with _lock:
        if key in _loaded:
            return _loaded[key]
        key_lock = _loading.setdefault(key, threading.Lock())
    with key_lock:
        with _lock:
            if key in _loaded:
                return _loaded[key]
        log.debug("loading %s", key)
        value = load()  # a failed load caches nothing; the next call tries again
        with _lock:
            _loaded[key] = value
            _loading.pop(key, None)
        return value


def clear() -> None:
    with _lock:
        _loaded.clear()


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
