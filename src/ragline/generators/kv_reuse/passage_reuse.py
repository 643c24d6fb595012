"""Generation with per-passage KV reuse on the HF backend.

Modes (the generate stage's ``kv_reuse``):

- ``full``: the block prompt's tokens in one ordinary forward — the
  reference, tokenised exactly like the block modes;
- ``block``: pure block attention: the prefix and every number/passage block
  come from the cache (prefilled alone on a miss), are laid out with their
  keys rotated to their offsets, and only the final block is prefilled;
- ``sink``: the training-free remedy for models not fine-tuned on blocks.
  A stock model prefilled on a lone passage treats its first token as the
  attention sink it always saw at position 0, and the block's states drift
  from what they would be in a full prompt. Here each block is prefilled
  after the first ``sink_tokens`` tokens of the shared prefix (default: all
  of it), which it attends to and which are not stored; the sink is the same
  for every block, so reuse is unchanged. The knob trades prefill cost per
  miss (sink + block tokens) against fidelity;
- ``blend``: CacheBlend (``cache_blend``): the block layout with a fraction
  (``blend_fraction``, default 0.05) of its tokens — those whose cached
  values deviate most at ``blend_check_layer`` — recomputed attending to
  every block. The blended layout is kept like a block layout and serves
  every question over the same blocks in the same order. The default is the
  best measured within the goal of under 0.3× full prefill's warm time to
  first token (`benchmarks/kv_reuse.py`, SmolLM2: 0.05 closes 0.60 of block's
  answer-NLL gap at 0.19×; 0.15 closes 0.69 at 0.31×).

Cache entries are keyed by model id and the exact token ids (with the sink's,
in ``sink`` mode). The assembled layout of a prompt's blocks (copied into one
buffer per layer, keys rotated) is kept too (``layout_store``, up to
``layout_bytes``) and reused when the same blocks recur in the same order;
the question's own tokens are written after the layout's blocks, never into
them. Each call reports hits, misses, bytes and where its time before
generation went (``prompt_s``, ``layout_s``, ``rotation_s``) in its stats.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from ragline.engine.errors import ConfigError, user_facing_kernel
from ragline.engine.lm.prompts import PromptBuilder
from ragline.engine.settings import NonNegativeInt, PositiveInt, UnitInterval
from ragline.engine.types import Passage
from ragline.generators.backend import Generation, Sampling, TokenLevelBackend
from ragline.generators.kv_reuse.block_attention import prefill_blocks, rotary_frequencies, slice_block
from ragline.generators.kv_reuse.block_layout import BlockLayout, lay_out
from ragline.generators.kv_reuse.block_prompt import BlockPrompt, block_prompt
from ragline.generators.kv_reuse.block_store import BlockStore
from ragline.generators.kv_reuse.cache_blend import blend
from ragline.generators.kv_reuse.layout_store import LayoutStore
from ragline.generators.kv_reuse.modes import CachedMode

log = logging.getLogger(__name__)

# Room left after a layout's blocks for a question and its answer: enough for
# most, so that the next question over the same blocks fits too.
LAYOUT_ROOM = 256


class PassageKVReuse:
    # The annotations are the schema of the generate stage's kv_options.
    def __init__(self, generator: TokenLevelBackend, mode: CachedMode = "block", sink_tokens: NonNegativeInt | None = None,
                 memory_bytes: NonNegativeInt = 2 << 30, directory: str | None = None,
                 shift: Literal["auto", "torch", "triton"] = "auto", layout_bytes: NonNegativeInt = 1 << 30,
                 blend_fraction: UnitInterval = 0.05, blend_check_layer: PositiveInt = 1):
        """Made by the generate stage, which checks its ``kv_options`` with
        ``check_options`` when the pipeline is built."""
        self.generator = generator
        self.mode = mode
        self.sink_tokens = sink_tokens
        self.memory_bytes = memory_bytes
        self.directory = directory
        self.shift_name = shift
        self.layout_bytes = layout_bytes
        self.blend_fraction = blend_fraction
        self.blend_check_layer = blend_check_layer
        self.store: BlockStore | None = None
        self.layouts: LayoutStore | None = None
        self._inv_freq = None
        self._shift = None

    def warm_up(self) -> None:
        if self.store is not None:
            return
        self.generator.warm_up()
        model = self.generator.lm
        layers = model.config.num_hidden_layers  # as blend() reads it
        # On a one-layer model the default (1) stands for its only layer, as blend() clamps it.
        if self.mode == "blend" and self.blend_check_layer >= max(layers, 2):
            raise ConfigError(f"generate: kv_options.blend_check_layer: {self.blend_check_layer} is beyond "
                              f"{self.generator.model}'s layers (it has {layers}: 0 to {layers - 1})")
        self._inv_freq = rotary_frequencies(model)  # refuses models and RoPE types it cannot shift
        self.store = BlockStore(self.generator.model, self.memory_bytes, self.directory)
        self.layouts = LayoutStore(self.layout_bytes)
        self._shift = _shift_kernel(self.shift_name, model.device)

    def generate(self, builder: PromptBuilder, question: str, passages: Sequence[Passage], sampling: Sampling,
                 on_text: Callable[[str], None] | None = None,
                 kept: Mapping[str, Sequence[tuple[int, int]]] | None = None) -> tuple[Generation, dict]:
        """Answer from cached passage blocks. ``kept`` (a compressor's
        ``Query.kept``): only those sentences of each passage, sliced out of
        the whole passage's cached block — no passage token is prefilled
        again. The stats include the context text the model saw."""
        self.warm_up()
        started = time.perf_counter()
        prompt = block_prompt(self.generator.tokenizer, builder, question, passages, kept)
        ids = prompt.all_ids
        self.generator.check_window([ids], sampling)
        before = dict(self.store.stats)
        if self.mode == "full":
            generation = self.generator.generate_ids(ids, sampling, on_text)
            stats = {"kv_reuse": "full", "prefilled_tokens": len(ids)}
        else:
            prompted = time.perf_counter()
            layout, reused = self.layout_for(prompt, len(prompt.final) + sampling.max_new_tokens)
            assembled = time.perf_counter()
            with self._open_cache(layout) as cache:
                generation = self.generator.generate_ids(ids, sampling, on_text, past_key_values=cache)
            if generation.ttft is not None:
                generation.ttft += assembled - started
            stats = {key: self.store.stats[key] - before[key] for key in before}
            rotation = 0.0 if layout is None or reused else layout.rotation_seconds
            blend_s = 0.0 if layout is None or reused else layout.blend_seconds
            stats.update(kv_reuse=self.mode, cached_tokens=prompt.cached_tokens, prefilled_tokens=len(prompt.final),
                         cache_bytes=self.store.bytes_held, layout_reused=reused, prompt_s=prompted - started,
                         layout_s=assembled - prompted - rotation - blend_s, rotation_s=rotation)
            if self.mode == "blend" and layout is not None:
                stats.update(recomputed_tokens=len(layout.recomputed), blend_s=blend_s)
        if kept is not None:
            stats["context"] = self.generator.tokenizer.decode(
                [t for i in range(len(prompt.blocks)) for t in prompt.kept(i)])
        return generation, stats

    def answer_nll(self, builder: PromptBuilder, question: str, passages: Sequence[Passage], answer_ids: list[int],
                   kept: Mapping[str, Sequence[tuple[int, int]]] | None = None) -> float:
        """Mean negative log-likelihood per token of ``answer_ids``, teacher-forced
        after the very prompt and cache ``generate`` uses."""
        import torch

        from ragline.generators.kv_reuse.block_attention import final_block_logits

        self.warm_up()
        prompt = block_prompt(self.generator.tokenizer, builder, question, passages, kept)
        layout = None if self.mode == "full" else self.layout_for(prompt, len(prompt.final) + len(answer_ids))[0]
        if layout is None:  # "full", or nothing cached (a compression that kept nothing)
            return self.generator.continuation_nll(prompt.all_ids, answer_ids)
        with self._open_cache(layout) as cache:
            logits = final_block_logits(self.generator.lm, cache, list(prompt.final) + list(answer_ids))
        predicting = logits[len(prompt.final) - 1: len(prompt.final) - 1 + len(answer_ids)]
        targets = torch.tensor(answer_ids, device=predicting.device)
        return float(torch.nn.functional.cross_entropy(predicting.float(), targets))

    def layout_for(self, prompt: BlockPrompt, room: int) -> tuple[BlockLayout | None, bool]:
        """The prompt's prefix and blocks laid out one after another, and whether
        that layout was reused. A new layout takes its blocks from the store
        (prefilled alone on a miss), slices out the kept positions and rotates
        the keys into place. None when nothing is cached."""
        model = self.generator.lm
        sink = prompt.prefix[: self.sink_tokens] if self.mode == "sink" else []
        pieces = ([prompt.prefix] if prompt.prefix else []) + prompt.blocks
        keep = ([None] if prompt.prefix else []) + (prompt.keep or [None] * len(prompt.blocks))
        if not pieces:
            return None, False
        entries = []  # (store key, the ids it is keyed by, the piece, its sink, kept positions)
        for index, (piece, positions) in enumerate(zip(pieces, keep)):
            # The prefix is the sink itself: it is prefilled as it is.
            with_sink = sink if (sink and not (index == 0 and prompt.prefix)) else []
            ids = list(with_sink) + list(piece)
            entries.append((self.store.key_of(ids), ids, piece, with_sink, positions))
        layout_key = tuple((key, None if positions is None else tuple(positions)) for key, *_, positions in entries)
        if self.mode == "blend":
            layout_key += (("blend", self.blend_fraction, self.blend_check_layer),)
        layout = self.layouts.get(layout_key)
        if layout is not None:
            self.store.served_by_layout([key for key, *_ in entries])
            return layout, True
        blocks = []
        stored = self.store.get_or_compute_many([ids for _, ids, *_ in entries], [key for key, *_ in entries],
                                                lambda missing: self._prefill([entries[i] for i in missing]))
        for block, (*_, positions) in zip(stored, entries):
            block = self.store.to_device(block, model.device)
            if positions is not None:
                block = slice_block(block, positions, self._inv_freq, self._shift)
            blocks.append(block)
        layout = lay_out(blocks, self._inv_freq, max(room, LAYOUT_ROOM), self._shift)
        if self.mode == "blend":
            layout = blend(model, layout, prompt.all_ids[: layout.length], self.blend_fraction,
                           self.blend_check_layer)
        self.layouts.put(layout_key, layout)
        return layout, False

    def _prefill(self, entries: list[tuple]) -> list:
        """The blocks of ``entries`` that no tier holds, prefilled in batches of
        similar length, blocks with the same sink together, in order."""
        model = self.generator.lm
        blocks = [None] * len(entries)
        by_sink: dict[tuple, list[int]] = {}
        for n, entry in enumerate(entries):
            by_sink.setdefault(tuple(entry[3]), []).append(n)
        for sink, members in by_sink.items():
            for n, block in zip(members, prefill_blocks(model, [entries[n][2] for n in members], sink)):
                blocks[n] = block
        return blocks

    def _open_cache(self, layout: BlockLayout | None):
        """A cache over ``layout`` for one call (None without a layout)."""
        return contextlib.nullcontext() if layout is None else layout.open_cache(self.generator.lm.config)

    def _assembled_cache(self, prompt: BlockPrompt):
        """A cache over the prompt's layout that may be kept and written to (it
        copies the layout on its first write); None when nothing is cached."""
        layout, _ = self.layout_for(prompt, len(prompt.final))
        return None if layout is None else layout.detached_cache(self.generator.lm.config)


def _shift_kernel(name: str, device):
    if name == "auto":
        from ragline.kernels.triton_runtime import prefer_triton

        name = "triton" if prefer_triton(device) else "torch"
        log.debug("RoPE shift on %s: the %s kernel", device, name)
    if name == "triton":
        from ragline.kernels.rope_shift_triton import rope_shift_triton

        return user_facing_kernel(rope_shift_triton)
    if name == "torch":
        return None  # the layout's own torch rotation: per-token tables, one pass per layer
    raise ConfigError(f"unknown RoPE shift kernel {name!r}; use auto, torch or triton")
