"""Reranking and reordering stages: the cross-encoder, and attention-based
reordering of passages (AttnRank, attention sorting)."""
