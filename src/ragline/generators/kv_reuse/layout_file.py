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
    token_ids: tuple[int, ...]  # the prompt's first tokens, whose keys and values the file holds
    salt: str

    @property
    def tokens(self) -> int:
        return len(self.token_ids)

    def transfer_params(self) -> dict:
        """What a request carries to the connector (``kv_transfer_params``)."""
        return {PATH_KEY: str(self.path), TOKENS_KEY: self.tokens}


def save_layout(layout, token_ids, path: Path) -> LayoutFile:
    """A ``BlockLayout``'s tokens (not its room) written to ``path``;
    ``token_ids``: the prompt tokens it stands for (a prompt that does not
    start with them is refused)."""
    import torch
    from safetensors.torch import save_file

    tokens = layout.length
    if len(token_ids) < tokens:
        raise ValueError(f"the layout holds {tokens} tokens, but only {len(token_ids)} token ids were given")
    path = Path(path).resolve()  # read by vLLM's worker process, whatever its working directory
    keys = torch.stack([k[0, :, :tokens, :].transpose(0, 1) for k in layout.keys]).contiguous()
    values = torch.stack([v[0, :, :tokens, :].transpose(0, 1) for v in layout.values]).contiguous()
    save_file({"keys": keys, "values": values}, str(path))
    return LayoutFile(path, tuple(token_ids[:tokens]), f"ragline-layout-{uuid.uuid4().hex}")
