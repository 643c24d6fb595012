"""Context compression stages (Sentinel, AttentionRAG, baselines). Empty until
those stages land; see the project's open issues."""
