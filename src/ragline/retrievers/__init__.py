"""Retrieval stages: BM25 (Lucene via pyserini), dense (sentence-transformers +
FAISS) and score fusion."""
