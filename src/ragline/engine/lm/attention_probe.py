"""The attention probe: how much attention a few positions pay to spans of the
context, per layer and head, from a normal (SDPA) forward.

transformers routes every attention layer through a registry of attention
functions. For the length of one forward the probe swaps the model's
implementation for a wrapper that calls the original function unchanged (so
the forward keeps its fused kernel) and, on the side, hands the layer's
post-RoPE query rows of the probed positions, its keys and its own mask rows
to the span-attention kernel (``kernels/``). Only (P × T) mask rows and the
(heads × P × spans) result per layer are ever made; no n×n attention matrix.

Sentinel, AttentionRAG, AttnRank and attention sorting all read attention
through this one class.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ragline.engine.errors import RaglineError, user_facing_kernel

log = logging.getLogger(__name__)

# Architectures whose attention layers call the registry with post-RoPE
# queries and keys, and whose mask/scaling/window the probe reproduces; each
# is checked against eager attention in tests/test_attention_probe.py.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")

_ACTIVE: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar("ragline_probe", default=None)


@dataclass
class ProbeResult:
    #: (layers, batch, heads, probed positions, spans): softmax mass per span.
    #: A probe of chosen heads has one row per (layer, head) pair, in the order
    #: asked, each with a head axis of one: (pairs, batch, 1, positions, spans).
    attention: torch.Tensor
    #: (batch, spans): tokens in each span.
    span_lengths: torch.Tensor
    #: (batch, vocab): next-token logits at the last position.
    last_logits: torch.Tensor

    def renormalized(self) -> ProbeResult:
        """Attention as a share of what the spans received together (the
        context), so that mass on the prompt template or the question does not
        dilute it."""
        total = self.attention.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        return ProbeResult(self.attention / total, self.span_lengths, self.last_logits)

    def per_token(self) -> torch.Tensor:
        """Mean attention per token of each span: (layers, batch, heads, P, spans)."""
        lengths = self.span_lengths.to(self.attention)[None, :, None, None, :].clamp_min(1)
        return self.attention / lengths


def span_ids_from_ranges(ranges: Sequence[tuple[int, int]], length: int) -> torch.Tensor:
    """(length,) span index per token from half-open token ranges; -1 elsewhere.
    Ranges must not overlap."""
    ids = torch.full((length,), -1, dtype=torch.long)
    for index, (start, end) in enumerate(ranges):
        if not 0 <= start <= end <= length:
            raise RaglineError(f"span {index} ({start}, {end}) lies outside the {length}-token sequence")
        if (ids[start:end] >= 0).any():
            raise RaglineError(f"span {index} ({start}, {end}) overlaps an earlier span")
        ids[start:end] = index
    return ids


class AttentionProbe:
    """``backend``: ``torch`` (chunked reference), ``triton`` (fused kernel;
    on a CPU only under ``TRITON_INTERPRET=1``) or ``auto`` (Triton on a GPU
    when it is installed, else torch)."""

    def __init__(self, model, backend: str = "auto", key_chunk: int = 1024):
        model_type = getattr(model.config, "model_type", type(model).__name__)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise RaglineError(f"the attention probe does not support {model_type!r} models "
                               f"({type(model).__name__}); supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        if backend not in ("auto", "torch", "triton"):
            raise RaglineError(f"unknown probe backend {backend!r}; use auto, torch or triton")
        self.model = model
        self.backend = backend
        self.key_chunk = key_chunk
        self.num_layers = model.config.num_hidden_layers
        self.num_heads = model.config.num_attention_heads

    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor, span_ids: torch.Tensor, num_spans: int | None = None,
            query_positions: Sequence[int] | torch.Tensor | None = None,
            attention_mask: torch.Tensor | None = None, layers: Sequence[int] | None = None,
            heads: Sequence[tuple[int, int]] | None = None) -> ProbeResult:
        """``input_ids`` (B, T); ``span_ids`` (T,) or (B, T), -1 outside every
        span; ``query_positions`` index the sequence (default: the last token;
        batches are left-padded so that it is every row's last token).
        ``heads``: read only these (layer, head) pairs (e.g. retrieval heads);
        the kernel then computes those heads alone, and the result has one row
        per pair (see ``ProbeResult.attention``)."""
        device = self.model.device
        input_ids = input_ids.to(device)
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        batch, length = input_ids.shape
        span_ids = span_ids.to(device)
        if span_ids.ndim == 1:
            span_ids = span_ids[None].expand(batch, -1)
        if span_ids.shape != (batch, length):
            raise RaglineError(f"span ids of shape {tuple(span_ids.shape)} do not match the input {(batch, length)}")
        if num_spans is None:
            num_spans = int(span_ids.max().item()) + 1 if span_ids.numel() else 0
        if query_positions is None:
            query_positions = [length - 1]
        positions = torch.as_tensor(query_positions, dtype=torch.long, device=device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
            if not bool(attention_mask[:, positions].all()):
                raise RaglineError("a probed position is padding; left-pad batches so the last token is real")

        selection = self._heads_by_layer(heads, layers)
        wanted = set(selection) if selection else set(range(self.num_layers)) if layers is None else set(layers)
        capture = _Capture(positions, span_ids, num_spans, self._kernel(input_ids.device), self.key_chunk, wanted,
                           selection)
        original = self.model.config._attn_implementation
        token = _ACTIVE.set(capture)
        self.model.set_attn_implementation(_probing_implementation(original))
        try:
            output = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
        finally:
            self.model.set_attn_implementation(original)
            _ACTIVE.reset(token)

        missing = capture.wanted - set(capture.per_layer)
        if missing:
            raise RaglineError(f"{type(self.model).__name__} never passed layers {sorted(missing)} through the "
                               "attention interface; the probe cannot read them")
        if selection:
            # Each layer computed its chosen heads in ascending order; pick the pairs out in the order asked.
            attention = torch.stack([capture.per_layer[layer][:, selection[layer].index(head)]
                                     for layer, head in heads]).unsqueeze(2)
        else:
            attention = torch.stack([capture.per_layer[i] for i in sorted(capture.per_layer)])
        lengths = torch.zeros((batch, num_spans), dtype=torch.long, device=device)
        valid = span_ids >= 0
        lengths.scatter_add_(1, span_ids.clamp_min(0), valid.long())
        return ProbeResult(attention, lengths, output.logits[:, -1].float())

    def _heads_by_layer(self, heads, layers) -> dict[int, list[int]] | None:
        """The chosen heads of each layer (ascending), or None to read every head."""
        if heads is None:
            return None
        if layers is not None:
            raise RaglineError("give the probe layers or (layer, head) pairs, not both")
        pairs = [(int(layer), int(head)) for layer, head in heads]
        if not pairs:
            raise RaglineError("the probe was given no (layer, head) pair to read")
        if len(set(pairs)) != len(pairs):
            raise RaglineError("a (layer, head) pair is given twice")
        for layer, head in pairs:
            if not (0 <= layer < self.num_layers and 0 <= head < self.num_heads):
                raise RaglineError(f"head ({layer}, {head}) does not exist in a model of {self.num_layers} layers "
                                   f"× {self.num_heads} heads")
        by_layer: dict[int, list[int]] = {}
        for layer, head in pairs:
            by_layer.setdefault(layer, []).append(head)
        return {layer: sorted(chosen) for layer, chosen in by_layer.items()}

    def _kernel(self, device: torch.device):
        backend = self.backend
        if backend == "auto":
            from ragline.kernels.triton_runtime import prefer_triton

            backend = "triton" if prefer_triton(device) else "torch"
            log.debug("attention probe on %s: the %s kernel", device, backend)
        if backend == "triton":
            from ragline.kernels.span_attention_triton import span_attention_triton

            triton_kernel = user_facing_kernel(span_attention_triton)
            return lambda *args, key_chunk, **kw: triton_kernel(*args, **kw)
        from ragline.kernels.span_attention import span_attention_reference
        return span_attention_reference


class _Capture:
    """What one probed forward collects, layer by layer."""

    def __init__(self, positions, span_ids, num_spans, kernel, key_chunk, wanted, heads=None):
        self.positions = positions
        self.span_ids = span_ids
        self.num_spans = num_spans
        self.kernel = kernel
        self.key_chunk = key_chunk
        self.wanted = wanted
        self.heads = heads  # layer -> chosen query heads, or None for all
        self.per_layer: dict[int, torch.Tensor] = {}

    def record(self, module, query, key, attention_mask, kwargs) -> None:
        layer = module.layer_idx
        if layer not in self.wanted:
            return
        allowed = self._allowed_rows(query, key, attention_mask, kwargs.get("sliding_window"))
        rows = query[:, :, self.positions, :]
        if self.heads is not None:
            # Only the chosen query heads, each paired with its own key head
            # (grouped-query attention): the kernel sees as many key heads as
            # query heads, and computes nothing for the others.
            chosen = self.heads[layer]
            group = query.shape[1] // key.shape[1]
            rows = rows[:, chosen]
            key = key[:, [head // group for head in chosen]]
        self.per_layer[layer] = self.kernel(
            rows, key, allowed, self.span_ids, self.num_spans, kwargs["scaling"],
            softcap=kwargs.get("softcap"), key_chunk=self.key_chunk,
        )

    def _allowed_rows(self, query, key, attention_mask, sliding_window) -> torch.Tensor:
        batch, key_length = key.shape[0], key.shape[2]
        if attention_mask is None:
            # The model relied on is_causal: no padding, plain causal (and a
            # window, on sliding layers whose window the sequence exceeds).
            from ragline.kernels.span_attention import causal_rows

            absolute = self.positions + (key_length - query.shape[2])
            return causal_rows(absolute, key_length, sliding_window, batch=batch)
        rows = attention_mask[:, 0, self.positions, :key_length]
        if rows.dtype != torch.bool:  # additive mask: 0 where visible, a large negative elsewhere
            rows = rows > torch.finfo(rows.dtype).min / 2
        return rows.expand(batch, -1, -1)


_REGISTERED: set[str] = set()


def _probing_implementation(original: str) -> str:
    """Register (once) an attention function and mask builder that wrap
    ``original`` and feed the active capture; return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = f"ragline_probe_{original}"
    if name in _REGISTERED:
        return name
    if original == "eager":
        raise RaglineError("the model was loaded with eager attention; the probe wraps a fused "
                           "implementation (load it with attn_implementation='sdpa')")
    if original not in ALL_ATTENTION_FUNCTIONS:
        raise RaglineError(f"the probe cannot wrap the {original!r} attention implementation")
    inner = ALL_ATTENTION_FUNCTIONS[original]

    def probing_attention(module, query, key, value, attention_mask, **kwargs):
        capture = _ACTIVE.get()
        if capture is not None:
            capture.record(module, query, key, attention_mask, kwargs)
        return inner(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(name, probing_attention)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
    _REGISTERED.add(name)
    return name
