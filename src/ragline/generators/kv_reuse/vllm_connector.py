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
path (``kv_transfer_config``), and takes one KV-cache group. With a
connector that does not declare support for vLLM's hybrid KV-cache manager
(this one), vLLM turns that manager off, so a model with sliding-window
layers (Gemma 3) has one group too: those layers keep every token's keys
and values, as ragline's layouts do, and the kernel applies the window.
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
    end: int  # the position after the last one to write
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
        # The cache write takes the model's dtype (it quantises itself for an fp8 cache).
        self.model_dtype = vllm_config.model_config.dtype
        # Scheduler side, for the step being scheduled: the first position each
        # request's layout is written from, then what each claimed request loads.
        self._starts: dict[str, int] = {}
        self._claimed: dict[str, tuple[str, int, int]] = {}

    # -- scheduler side -------------------------------------------------

    def get_num_new_matched_tokens(self, request, num_computed_tokens: int) -> tuple[int, bool]:
        """The layout's tokens beyond those vLLM's own prefix cache holds.
        At least one prompt token is left to run, for the first answer token.
        Asked again for a preempted request when it resumes (from nothing
        computed, or what the prefix cache still holds)."""
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
        """A load for every request claimed in this step: a new one, or one
        resumed after preemption (its blocks are all new then)."""
        loads = LayoutLoads()
        for new in scheduler_output.scheduled_new_reqs:
            if new.req_id in self._claimed:
                loads.loads.append(_Load(*self._claimed.pop(new.req_id), block_ids=list(new.block_ids[0])))
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            if req_id in self._claimed and req_id in cached.resumed_req_ids and cached.new_block_ids[i] is not None:
                loads.loads.append(_Load(*self._claimed.pop(req_id), block_ids=list(cached.new_block_ids[i][0])))
        if self._claimed:  # a claim is always scheduled in the step that made it
            raise RuntimeError(f"layout claims not scheduled in their step: {sorted(self._claimed)}")
        self._starts.clear()  # requests looked up but not scheduled are looked up again
        return loads

    # -- worker side ----------------------------------------------------

    def start_load_kv(self, forward_context, **kwargs: Any) -> None:
        from safetensors.torch import load_file

        loads = self._get_connector_metadata()
        assert isinstance(loads, LayoutLoads)
        layers = [(_layer_number(name), layer) for name, layer in forward_context.no_compile_layers.items()
                  if isinstance(getattr(layer, "kv_cache", None), torch.Tensor) and layer.kv_cache.numel()]
        for load in loads.loads:
            tensors = load_file(load.path)
            keys, values = tensors["keys"], tensors["values"]
            for number, layer in layers:  # every layer checked before any is written
                _check_layout(load.path, keys, values, number, load.end, layer)
            positions = torch.arange(load.start, load.end)
            blocks = torch.tensor(load.block_ids, dtype=torch.long)
            slots = blocks[positions // self.block_size] * self.block_size + positions % self.block_size
            for number, layer in layers:
                cache = layer.kv_cache
                layer.impl.do_kv_cache_update(
                    layer, keys[number, load.start:load.end].to(cache.device, self.model_dtype),
                    values[number, load.start:load.end].to(cache.device, self.model_dtype), cache,
                    slots.to(cache.device))

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # loads are synchronous: done before the forward starts

    def save_kv_layer(self, layer_name: str, kv_layer, attn_metadata, **kwargs: Any) -> None:
        return  # ragline's block store is written by ragline, not from vLLM's cache

    def wait_for_save(self) -> None:
        return


def _layer_number(name: str) -> int:
    found = LAYER_NUMBER.search(name)
    if found is None:
        raise ValueError(f"attention layer {name!r}: no layer number in its name to find its layout rows by")
    return int(found.group(1))


def _check_layout(path: str, keys: torch.Tensor, values: torch.Tensor, layer_number: int, tokens: int, layer) -> None:
    """A layout file that does not fit the model is refused before anything is
    written from it (ragline checks the file before sending the request too)."""
    wanted = (layer.num_kv_heads, layer.head_size)
    if keys.shape != values.shape or keys.dim() != 4 or layer_number >= keys.shape[0] or keys.shape[1] < tokens \
            or tuple(keys.shape[2:]) != wanted:
        raise ValueError(f"{path}: keys {tuple(keys.shape)} and values {tuple(values.shape)} do not fit layer "
                         f"{layer_number} of this model ({tokens} tokens, kv heads and head size {wanted})")
