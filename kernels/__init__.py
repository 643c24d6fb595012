"""Attention-probe kernels: span attention of a few query rows without an n×n
matrix, as a chunked torch reference (``span_attention``) and a fused Triton
kernel (``span_attention_triton``) with the same contract."""
