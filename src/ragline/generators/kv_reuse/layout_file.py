"""A block layout handed to another process as one file: what the vllm
backend's layout connector (``vllm_connector``) writes into vLLM's paged
cache.

The file holds the layout's keys and values, each (layers, tokens, kv_heads,
head_dim), the order vLLM's cache writes take. Its ``salt`` (fresh for each
saved layout) becomes the requests' ``cache_salt``: vLLM's prefix cache then
shares the blocks loaded from a layout only with requests over that same
layout, never with a prompt of the same tokens prefilled as usual — their
keys and values differ.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

PATH_KEY = "ragline_layout"
TOKENS_KEY = "ragline_tokens"


@dataclass(frozen=True)
class LayoutFile:
    path: Path
    tokens: int  # the prompt's first tokens that the file holds
    salt: str

    def transfer_params(self) -> dict:
        """What a request carries to the connector (``kv_transfer_params``)."""
        return {PATH_KEY: str(self.path), TOKENS_KEY: self.tokens}


def save_layout(layout, path: Path) -> LayoutFile:
    """A ``BlockLayout``'s tokens (not its room) written to ``path``."""
    import torch
    from safetensors.torch import save_file

    tokens = layout.length
    keys = torch.stack([k[0, :, :tokens, :].transpose(0, 1) for k in layout.keys]).contiguous()
    values = torch.stack([v[0, :, :tokens, :].transpose(0, 1) for v in layout.values]).contiguous()
    save_file({"keys": keys, "values": values}, str(path))
    return LayoutFile(Path(path), tokens, f"ragline-layout-{uuid.uuid4().hex}")
