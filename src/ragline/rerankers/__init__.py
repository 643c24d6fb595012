"""Reranking stages: the cross-encoder and in-context reranking (ICR)."""
