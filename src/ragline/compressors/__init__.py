"""Context compression stages: Sentinel, AttentionRAG, and the random, leading
and embedding-similarity baselines, all choosing sentences under one budget."""
