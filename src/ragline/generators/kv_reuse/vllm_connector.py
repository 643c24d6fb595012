"""Passage KV reuse inside vLLM: a KV connector that writes ragline's laid-out
passage blocks into vLLM's paged cache (a measured spike:
benchmarks/vllm_kv_connector.py, tests/test_vllm_engine.py).

ragline assembles a prompt's cached blocks (prefix, passage numbers,
passages; keys rotated to their offsets) exactly as its hf backend does
(``PassageKVReuse.layout_for``: ``block``, ``sink`` or ``blend``) and saves
the layout to a file (``layout_file``). A request names that file and the
number of prompt tokens it holds (``kv_transfer_params``). The connector's
scheduler side reports those tokens as computed, so vLLM prefills only the
final block (question and instruction); its worker side copies the file's
keys and values into the request's paged blocks through each attention
layer's own cache write (``impl.do_kv_cache_update``), before the forward
that reads them. Blocks already in vLLM's prefix cache from an earlier
request over the same layout (the same ``cache_salt``) are not written again.

It runs in vLLM's engine and worker processes, which import it by module
path (``kv_transfer_config``), and supports models with one KV-cache group
(global attention in every layer: Llama, Qwen2 — not Gemma 3, whose
sliding-window layers are a second group).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from ragline.generators.kv_reuse.layout_file import PATH_KEY, TOKENS_KEY

LAYER_NUMBER = re.compile(r"\.layers\.(\d+)\.")


def connector_config():
    """The ``kv_transfer_config`` of an engine with this connector."""
    from vllm.config import KVTransferConfig

    return KVTransferConfig(kv_connector=RaglineLayoutConnector.__name__, kv_role="kv_both",
                            kv_connector_module_path=__name__)


@dataclass
class _Load:
    path: str
    start: int  # the first position to write: those before it are in vLLM's prefix cache already
    tokens: int
    block_ids: list[int]


@dataclass
class LayoutLoads(KVConnectorMetadata):
    """What the worker writes before this step's forward."""
    loads: list[_Load] = field(default_factory=list)


class RaglineLayoutConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config, role: KVConnectorRole, kv_cache_config=None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        if kv_cache_config is not None and len(kv_cache_config.kv_cache_groups) != 1:
            raise ValueError(f"{type(self).__name__} supports models with one KV-cache group (global attention "
                             f"in every layer); this one has {len(kv_cache_config.kv_cache_groups)}")
        self.block_size = vllm_config.cache_config.block_size
        # Scheduler side: request id → (file, first position to write, tokens).
        self._starts: dict[str, int] = {}
        self._claimed: dict[str, tuple[str, int, int]] = {}

    # -- scheduler side -------------------------------------------------

    def get_num_new_matched_tokens(self, request, num_computed_tokens: int) -> tuple[int, bool]:
        """The layout's tokens beyond those vLLM's own prefix cache holds.
        At least one prompt token is left to run, for the first answer token."""
        params = request.kv_transfer_params or {}
        tokens = int(params.get(TOKENS_KEY, 0))
        if tokens <= num_computed_tokens or tokens >= request.num_prompt_tokens:
            return 0, False
        self._starts[request.request_id] = num_computed_tokens
        return tokens - num_computed_tokens, False

    def update_state_after_alloc(self, request, blocks, num_external_tokens: int) -> None:
        start = self._starts.pop(request.request_id, None)
        if num_external_tokens > 0 and start is not None:
            params = request.kv_transfer_params
            self._claimed[request.request_id] = params[PATH_KEY], start, start + num_external_tokens

    def build_connector_meta(self, scheduler_output) -> LayoutLoads:
        loads = LayoutLoads()
        for new in scheduler_output.scheduled_new_reqs:
            claimed = self._claimed.pop(new.req_id, None)
            if claimed is not None:
                loads.loads.append(_Load(*claimed, block_ids=list(new.block_ids[0])))
        # A request claimed but not scheduled in this step claims again when it is.
        self._claimed.clear()
        self._starts.clear()
        return loads

    # -- worker side ----------------------------------------------------

    def start_load_kv(self, forward_context, **kwargs: Any) -> None:
        from safetensors.torch import load_file

        loads = self._get_connector_metadata()
        assert isinstance(loads, LayoutLoads)
        for load in loads.loads:
            tensors = load_file(load.path)
            keys, values = tensors["keys"], tensors["values"]
            positions = torch.arange(load.start, load.tokens)
            blocks = torch.tensor(load.block_ids, dtype=torch.long)
            slots = blocks[positions // self.block_size] * self.block_size + positions % self.block_size
            for name, layer in forward_context.no_compile_layers.items():
                cache = getattr(layer, "kv_cache", None)
                if not isinstance(cache, torch.Tensor) or cache.numel() == 0:
                    continue
                number = int(LAYER_NUMBER.search(name).group(1))
                _check_layout(load.path, keys, values, number, load.tokens, layer)
                layer.impl.do_kv_cache_update(
                    layer, keys[number, load.start:load.tokens].to(cache.device, cache.dtype),
                    values[number, load.start:load.tokens].to(cache.device, cache.dtype), cache, slots.to(cache.device))

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # loads are synchronous: done before the forward starts

    def save_kv_layer(self, layer_name: str, kv_layer, attn_metadata, **kwargs: Any) -> None:
        return  # ragline's block store is written by ragline, not from vLLM's cache

    def wait_for_save(self) -> None:
        return


def _check_layout(path: str, keys: torch.Tensor, values: torch.Tensor, layer_number: int, tokens: int, layer) -> None:
    """A layout file that does not fit the model is refused before anything is written from it."""
    wanted = (tokens, layer.num_kv_heads, layer.head_size)
    if keys.shape != values.shape or keys.dim() != 4 or layer_number >= keys.shape[0] or keys.shape[1] < tokens \
            or tuple(keys.shape[2:]) != wanted[1:]:
        raise ValueError(f"{path}: keys {tuple(keys.shape)} and values {tuple(values.shape)} do not fit layer "
                         f"{layer_number} of this model (tokens, kv heads, head size {wanted})")
