"""Pure math for the attention stages, each as a torch reference and a Triton
kernel with the same contract: span attention (a few query rows' softmax
pooled onto spans, without an n×n matrix) and the RoPE shift of cached keys.
Nothing here imports the rest of ragline; failures are ``KernelUnavailable``."""
