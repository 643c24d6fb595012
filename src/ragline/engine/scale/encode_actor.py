"""Encoding passages on a Ray actor pool (engine/scale/actor_pool.py): the
actor class, one instance per actor.

Each actor loads its encoders once, through the same loader and with the same
settings as a single-process build (engine/lm/encoders.py), and then turns
every list of texts it is given (the text the retrievers see) into
unit-length float32 vectors, one matrix per encoder.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ragline.engine.lm.encoders import encode_texts, load_sentence_encoder

# Fault injection for tests: with this variable naming a file that does not
# exist yet, the first actor to take a batch creates the file and dies on the
# spot, as a killed worker would; Ray must restart it and retry the batch.
EXIT_ONCE_VARIABLE = "RAGLINE_RAY_TEST_EXIT_ONCE"


class EncodePassages:
    """``encoders`` maps a component name to ``load_sentence_encoder``'s
    arguments and the batch size (``DenseIndexBuilder.encoder_settings()``)."""

    def __init__(self, encoders: dict[str, dict[str, Any]]):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per actor would only clutter the driver's terminal
        self.encoders = {
            name: (load_sentence_encoder(s["encoder"], s["device"], s["backend"]), s["batch_size"])
            for name, s in encoders.items()
        }

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        _exit_once_if_asked()
        return {name: encode_texts(model, texts, batch_size) for name, (model, batch_size) in self.encoders.items()}


def _exit_once_if_asked() -> None:
    marker = os.environ.get(EXIT_ONCE_VARIABLE)
    if not marker:
        return
    try:
        created = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(created)
    os._exit(1)
