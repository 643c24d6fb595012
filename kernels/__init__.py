"""Attention-probe and RoPE kernels (torch reference + Triton). Empty until the
probe lands; see the project's open issues."""
