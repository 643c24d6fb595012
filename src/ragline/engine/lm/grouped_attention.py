"""SDPA that leaves grouped-query heads to the kernel on the CPU.

transformers' ``sdpa`` expands a grouped-query model's key and value heads to
its query heads (``repeat_kv``: a copy of the whole cache, per layer, per
forward) whenever a mask is given, because CUDA's fused kernels take grouped
heads only without one. Torch's CPU kernel takes them with a mask
(``enable_gqa``). A question prefilled over cached passages always has a mask
(its own tokens are causal, the cache is not), so on the CPU the copy was half
of the work: SmolLM2-135M (3 key/value heads for 9 query heads), a 39-token
question over 7,588 cached tokens, time to first token 1.13 s → 0.57 s.

Registered once under its own name; ``load_causal_lm`` gives it to models on
the CPU. Everything it does not take over (a GPU, no mask, one query token,
position biases, soft-capping) is transformers' own ``sdpa``, unchanged.
"""

from __future__ import annotations

NAME = "ragline_sdpa"
_registered: list[str] = []


def register() -> str:
    """Register the implementation (once per process) and return its name."""
    if _registered:
        return NAME
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    def grouped_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                     position_bias=None, **kwargs):
        groups = getattr(module, "num_key_value_groups", 1)
        if (groups > 1 and attention_mask is not None and query.shape[2] > 1 and query.device.type == "cpu"
                and position_bias is None and kwargs.get("softcap") is None and not kwargs.get("output_attentions")):
            import torch

            output = torch.nn.functional.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True)
            return output.transpose(1, 2).contiguous(), None
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, position_bias=position_bias, **kwargs)

    AttentionInterface.register(NAME, grouped_sdpa)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    _registered.append(NAME)
    return NAME
