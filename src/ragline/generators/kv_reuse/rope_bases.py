"""Each layer's RoPE frequencies, for models whose layers rotate with
different bases.

Gemma 3 rotates its sliding-window layers with base 1e4 and its global layers
with base 1e6 (``config.rope_parameters`` per layer type; its rotary module
holds one ``<type>_inv_freq`` per type and no ``inv_freq``). A cached key
moved by Δ positions must be rotated by R(Δ) with its own layer's
frequencies, or the global layers' keys land at the wrong angle.

Frequencies travel as one tensor either way: (rotary/2,) when every layer
shares them, (layers, rotary/2) when they differ; ``layer_frequencies``
picks a layer's row, so code written for one base needs no second path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ragline.engine.errors import RaglineError
from ragline.kernels.rope_shift import rope_tables


def has_rope_per_layer_type(rotary) -> bool:
    return not hasattr(rotary, "inv_freq") and isinstance(getattr(rotary, "rope_type", None), dict)


def per_layer_frequencies(model, shiftable: Sequence[str]) -> torch.Tensor:
    """(layers, rotary/2): the frequencies each layer rotates its keys with,
    after refusing a layer type whose RoPE cannot be shifted."""
    rotary = model.model.rotary_emb
    layer_types = model.config.layer_types
    by_type = {}
    for layer_type in set(layer_types):
        rope_type = rotary.rope_type.get(layer_type)
        if rope_type not in shiftable:
            raise RaglineError(f"RoPE type {rope_type!r} of the {layer_type} layers changes its frequencies with the "
                               f"sequence length; cached keys cannot be moved (supported: {', '.join(shiftable)})")
        by_type[layer_type] = getattr(rotary, f"{layer_type}_inv_freq").detach().float()
    return torch.stack([by_type[layer_type] for layer_type in layer_types])


def layer_frequencies(inv_freq: torch.Tensor, layer: int) -> torch.Tensor:
    """The (rotary/2,) frequencies of ``layer``."""
    return inv_freq[layer] if inv_freq.ndim == 2 else inv_freq


def layer_tables(shifts: torch.Tensor, inv_freq: torch.Tensor, layers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``rope_tables`` for each of ``layers`` layers, computed once per distinct base."""
    if inv_freq.ndim == 1:
        return [rope_tables(shifts, inv_freq)] * layers
    distinct, which = torch.unique(inv_freq, dim=0, return_inverse=True)
    tables = [rope_tables(shifts, row) for row in distinct]
    return [tables[int(index)] for index in which]
