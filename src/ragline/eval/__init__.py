"""Evaluation: retrieval metrics through pytrec_eval."""
