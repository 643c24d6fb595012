"""The passage KV reuse modes (the generate stage's ``kv_reuse``) and the rules
for which ``kv_options`` a mode reads."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

from ragline.engine.errors import ConfigError

KVReuseMode = Literal["none", "full", "block", "sink", "blend"]
CachedMode = Literal["full", "block", "sink", "blend"]
KV_REUSE_MODES = typing.get_args(KVReuseMode)
# Options only one mode reads: given under another mode they would be
# silently ignored, which is a mistake, not a setting.
ONE_MODE_OPTIONS = {"sink_tokens": "sink", "blend_fraction": "blend", "blend_check_layer": "blend"}


def check_mode_options(mode: str, options: dict[str, Any] | None, owner: str = "generate") -> None:
    """The rules that span ``kv_reuse`` and ``kv_options`` (each option's own
    type and range is its annotation's, checked elsewhere)."""
    if not options:
        return
    if mode == "none":
        raise ConfigError(f"{owner}: kv_options: given, but kv_reuse is 'none' and reads none of them")
    for key, reader in ONE_MODE_OPTIONS.items():
        if key in options and mode != reader:
            raise ConfigError(f"{owner}: kv_options.{key}: only kv_reuse '{reader}' reads it (kv_reuse is {mode!r})")
    directory = options.get("directory")
    if isinstance(directory, str) and Path(directory).exists() and not Path(directory).is_dir():
        raise ConfigError(f"{owner}: kv_options.directory: {directory} exists and is not a folder")
