"""A sentence encoder's transformer run by ONNX Runtime on the CPU, in fp32 or
int8: exported once from the loaded model into the model cache, then put in
the place of the torch model inside the SentenceTransformer, so tokenisation,
pooling and normalisation stay sentence-transformers' own.

sentence-transformers' own ``backend="onnx"`` goes through Optimum, whose
ONNX releases require transformers < 4.58 (optimum-onnx 0.1.0) while ragline
runs on transformers 5; ``torch.onnx.export`` and onnxruntime need neither.

The recipe, chosen by measurement (all-MiniLM-L6-v2 on Vaswani abstracts,
2 shared AMD EPYC cores; ``benchmarks/retrieval.py --encoder-backends``):

- ``torch.onnx.export`` (the dynamo exporter), batch and sequence axes dynamic,
  of the model with its *eager* attention: the exported SDPA decomposition
  guards fully masked rows with ``IsNaN`` + ``Where`` over every
  (batch, head, query, key) score, about a fifth of the run time at 220
  tokens; eager attention is matmul, add, softmax, matmul;
- onnxruntime's quantisation pre-processing (shape inference, basic graph
  optimisation) gives ``model.onnx``;
- int8 (``model_int8.onnx``): dynamic quantisation of the MatMul weights with
  one scale per output channel (one scale per tensor, the default, lost far
  more: mean cosine to fp32 0.95 against 0.994), except the feed-forward
  down-projections, whose inputs (GELU outputs, with outliers) quantise worst:
  keeping those in fp32 halves the error (mean cosine 0.9968, lowest 0.993,
  against 0.9935 and 0.983) and costs about a quarter of the int8 speed-up;
- sessions optimise the graph at the basic level: the extended and all levels,
  and onnxruntime's offline BERT fusions (skip layer norm, bias GELU; its
  attention fusion does not match transformers 5's graph), were no faster
  here. What remains is the matrix products (three quarters of the fp32 run
  time at 220 tokens), which MLAS runs no faster than torch's oneDNN on AVX2.

An export is keyed by a hash of the model's configuration and weights, so a
changed model gets a new export and never runs an old one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from ragline.engine.atomic import atomic_directory, exclusive_lock
from ragline.engine.errors import ConfigError
from ragline.engine.integrity import damage_in, write_manifest
from ragline.engine.lm.packaged import model_cache_dir
from ragline.engine.optional import import_optional

log = logging.getLogger(__name__)

# Part of every export's cache key: a change to the recipe above re-exports.
RECIPE_VERSION = 3
FP32_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_SAMPLE_TEXTS = ["an example sentence", "a second, somewhat longer example sentence to export with"]


def run_on_onnx(encoder, int8: bool) -> None:
    """Put an ONNX Runtime session in place of the torch transformer of
    ``encoder`` (a SentenceTransformer on the CPU), exporting it first if
    the model cache has no export of these weights."""
    transformer = encoder[0]
    hf_model = getattr(transformer, "auto_model", None)
    if not isinstance(hf_model, torch.nn.Module) or not hasattr(hf_model, "config"):
        raise ConfigError("the onnx encoder backends need an encoder whose first module is a Hugging Face "
                          f"transformer, not {type(transformer).__name__}; use backend torch")
    folder = exported_model(encoder)
    # sentence-transformers 6 holds the model as ``model`` (``auto_model`` is
    # a read-only alias of it); 5 holds it as ``auto_model``.
    attribute = "model" if isinstance(getattr(type(transformer), "auto_model", None), property) else "auto_model"
    setattr(transformer, attribute, OnnxTransformer(folder / (INT8_FILE if int8 else FP32_FILE), hf_model.config))


def exported_model(encoder) -> Path:
    """The model-cache folder holding the ONNX exports of ``encoder``'s
    transformer, exporting them on first use (once, under a file lock, into a
    temporary folder swapped into place: no reader ever sees half an export)."""
    hf_model = encoder[0].auto_model
    key = _weights_key(hf_model)
    folder = model_cache_dir() / "onnx" / f"{type(hf_model).__name__}-{key[:24]}"
    if (folder / INT8_FILE).exists():
        problem = damage_in(folder)  # checked before every use: a damaged export must not rank anything
        if problem is None:
            return folder
        log.warning("the ONNX export in %s is damaged (%s): exporting it again", folder, problem)
    with exclusive_lock(folder.with_name(folder.name + ".lock")):
        if not (folder / INT8_FILE).exists() or damage_in(folder) is not None:  # another process may have made it
            log.info("exporting the encoder's transformer to ONNX in %s (once)", folder)
            with atomic_directory(folder, "ONNX export") as tmp:  # replaces a damaged one whole
                _export(encoder, tmp)
                write_manifest(tmp)
    return folder


class OnnxTransformer(torch.nn.Module):
    """Stands in for the Hugging Face model inside sentence-transformers'
    Transformer module: the same inputs, and an output that is read as
    ``output["last_hidden_state"]`` (sentence-transformers 6) or ``output[0]`` (5)."""

    device = torch.device("cpu")  # where sentence-transformers puts the inputs

    def __init__(self, path: Path, config):
        super().__init__()
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        # The thread budget torch would use (OMP_NUM_THREADS, torch.set_num_threads).
        options.intra_op_num_threads = torch.get_num_threads()
        # Each call runs a batch of texts: waiting threads gain nothing by
        # spinning, and on a shared CPU they burn cores others need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]
        self.config = config
        self.path = path

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                **_unused):
        from transformers.modeling_outputs import BaseModelOutput

        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if "token_type_ids" in self._inputs and token_type_ids is None:
            given["token_type_ids"] = torch.zeros_like(input_ids)
        feed = {name: given[name].numpy() for name in self._inputs}
        (hidden,) = self._session.run(["last_hidden_state"], feed)
        return BaseModelOutput(last_hidden_state=torch.from_numpy(hidden))


def _export(encoder, folder: Path) -> None:
    _import_onnxruntime()
    for needed in ("onnx", "onnxscript"):
        import_optional(needed, needed_for="exporting an encoder to ONNX")
    quantization = import_optional("onnxruntime.quantization", needed_for="exporting an encoder to ONNX")
    QuantType, quantize_dynamic = quantization.QuantType, quantization.quantize_dynamic
    quant_pre_process = import_optional("onnxruntime.quantization.shape_inference",
                                        needed_for="exporting an encoder to ONNX").quant_pre_process
    exported = folder / "exported.onnx"
    _torch_export(encoder, exported)
    with _root_logger_left_alone():
        quant_pre_process(str(exported), str(folder / FP32_FILE), skip_symbolic_shape=True)
        quantize_dynamic(str(folder / FP32_FILE), str(folder / INT8_FILE), weight_type=QuantType.QInt8,
                         per_channel=True, op_types_to_quantize=["MatMul"],
                         nodes_to_exclude=_down_projections(folder / FP32_FILE, encoder[0].auto_model.config))
    exported.unlink()


def _down_projections(path: Path, config) -> list[str]:
    """The MatMul nodes that take the feed-forward activations back to the
    hidden size: their weight is (intermediate size × hidden size)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
    down = (getattr(config, "intermediate_size", None), getattr(config, "hidden_size", None))
    return [node.name for node in graph.node if node.op_type == "MatMul" and len(node.input) == 2
            and shapes.get(node.input[1]) == down]


def _torch_export(encoder, path: Path) -> None:
    prepare = getattr(encoder, "preprocess", None) or encoder.tokenize  # named tokenize before sentence-transformers 6
    features = prepare(_SAMPLE_TEXTS)
    names = [name for name in _MODEL_INPUTS if isinstance(features.get(name), torch.Tensor)]
    dynamic = torch.export.Dim.DYNAMIC
    model = encoder[0].auto_model
    attention = model.config._attn_implementation
    model.set_attn_implementation("eager")  # see the recipe above; put back below, the model may be shared
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The exporter warns about its own internals (deprecated pytree
            # helpers, axis naming), nothing a user can act on.
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                _LastHiddenState(model.eval()), (), kwargs={name: features[name] for name in names},
                dynamo=True, verbose=False, input_names=names, output_names=["last_hidden_state"],
                dynamic_shapes={name: {0: dynamic, 1: dynamic} for name in names},
            )
    finally:
        model.set_attn_implementation(attention)
    program.save(str(path))


class _LastHiddenState(torch.nn.Module):
    """The Hugging Face model with plain tensors in and out, as an export wants."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state


def _weights_key(model: torch.nn.Module) -> str:
    """A hash of what the exported graph is made of: the configuration and the
    weights (the tokenizer runs outside it), and the recipe."""
    digest = hashlib.sha256(f"recipe {RECIPE_VERSION}\0{model.config.to_json_string()}\0".encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}\0".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _import_onnxruntime():
    return import_optional("onnxruntime", needed_for="the onnx encoder backends")


@contextlib.contextmanager
def _root_logger_left_alone() -> Iterator[None]:
    """onnxruntime's quantiser logs through the root logger, and a first
    message there installs a stderr handler on the root logger of the whole
    process (``logging.basicConfig``). A handler present meanwhile stops that;
    logging stays as the application set it up."""
    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)
    try:
        yield
    finally:
        root.removeHandler(guard)


