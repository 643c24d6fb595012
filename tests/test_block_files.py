"""KV block files: one stacked tensor per block, mapped rather than read, and
one copy per block into a layout equal to the per-layer layout."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from ragline.generators.kv_reuse.block_attention import BlockKV
from ragline.generators.kv_reuse.block_layout import lay_out
from ragline.generators.kv_reuse.block_store import BlockStore

LAYERS, HEADS, DIM = 4, 3, 16


def per_layer_block(first: int, length: int, seed: int) -> BlockKV:
    generator = torch.Generator().manual_seed(seed)
    shape = (1, HEADS, length, DIM)
    return BlockKV(tuple(range(first, first + length)), [torch.randn(shape, generator=generator) for _ in range(LAYERS)],
                   [torch.randn(shape, generator=generator) for _ in range(LAYERS)])


def test_blocks_read_back_from_disk_lay_out_as_the_per_layer_blocks_do(tmp_path):
    blocks = [per_layer_block(100 * i, length, seed=i) for i, length in enumerate((5, 9, 3))]
    writer = BlockStore("m", directory=tmp_path)
    for block in blocks:
        writer.get_or_compute(block.token_ids, lambda block=block: block)
    reader = BlockStore("m", directory=tmp_path)  # a new process: the disk tier only
    read = [reader.get_or_compute(b.token_ids, lambda: pytest.fail("recomputed a block on disk")) for b in blocks]
    assert reader.stats["disk_hits"] == 3
    assert all(r.stacked is not None and r.stacked.shape == (LAYERS, 2, 1, HEADS, b.length, DIM)
               for r, b in zip(read, blocks))
    inv_freq = 1.0 / (10000 ** (torch.arange(0, DIM, 2).float() / DIM))
    want = lay_out(blocks, inv_freq, room=4)  # per-layer copies
    got = lay_out(read, inv_freq, room=4)  # one copy per block
    assert got.length == want.length == 17 and got.room == want.room == 4
    for a, b in zip([*got.keys, *got.values], [*want.keys, *want.values]):
        torch.testing.assert_close(a[..., :17, :], b[..., :17, :], rtol=0, atol=0)
    assert got.keys[1].is_contiguous() and got.keys[1].shape == (1, HEADS, 21, DIM)


def test_a_block_file_of_the_per_layer_format_is_discarded_and_recomputed(tmp_path, caplog):
    from safetensors.torch import save_file

    block = per_layer_block(0, 6, seed=0)
    BlockStore("m", directory=tmp_path).get_or_compute(block.token_ids, lambda: block)
    (path,) = tmp_path.rglob("*.safetensors")
    tensors = {f"k{i}": k for i, k in enumerate(block.keys)} | {f"v{i}": v for i, v in enumerate(block.values)}
    save_file(tensors, str(path), metadata={"model": "m", "token_ids": json.dumps(list(block.token_ids)),
                                            "layers": str(LAYERS)})  # as written before 2026-12
    store = BlockStore("m", directory=tmp_path)
    with caplog.at_level(logging.WARNING):
        store.get_or_compute(block.token_ids, lambda: block)
    assert store.stats["discarded"] == 1 and "not a block of format" in caplog.text


def test_a_truncated_block_file_is_discarded_not_mapped_past_its_end(tmp_path):
    block = per_layer_block(0, 6, seed=0)
    BlockStore("m", directory=tmp_path).get_or_compute(block.token_ids, lambda: block)
    (path,) = tmp_path.rglob("*.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    store = BlockStore("m", directory=tmp_path)
    again = store.get_or_compute(block.token_ids, lambda: block)
    assert store.stats["discarded"] == 1 and again is block
