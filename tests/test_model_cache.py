"""One loaded copy of a model per process, whichever stages ask for it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from ragline.engine.errors import RaglineError
from ragline.engine.lm import model_cache


def test_attention_sorting_and_generation_share_one_model(tiny_lm):
    from ragline.engine.pipeline import Pipeline
    from ragline.generators.generate import Generate
    from ragline.reorderers.attention_sort import AttentionSort

    sort = AttentionSort(model=tiny_lm, device="cpu")
    generate = Generate(model=tiny_lm, options={"device": "cpu", "dtype": "float32"}, max_new_tokens=2)
    Pipeline([sort, generate]).warm_up()
    assert sort.reader.model is generate.backend.lm


def test_a_load_runs_once_under_concurrency_and_a_failure_is_not_cached():
    calls = []

    def load():
        calls.append(1)
        return object()

    key = ("test", "model-a")
    try:
        with ThreadPoolExecutor(4) as pool:
            found = list(pool.map(lambda _: model_cache.shared(key, load), range(8)))
        assert len(calls) == 1 and all(f is found[0] for f in found)

        def broken():
            raise RaglineError("no such model")

        for _ in range(2):  # tried again, failing again
            with pytest.raises(RaglineError):
                model_cache.shared(("test", "model-b"), broken)
    finally:
        model_cache.clear()
