"""Reranking stages (cross-encoder, attention-based reordering). Empty until
those stages land; see the project's open issues."""
