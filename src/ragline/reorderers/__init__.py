"""Reordering stages: put the passages where the generator looks (AttnRank) or
where its own attention says they belong (attention sorting)."""
