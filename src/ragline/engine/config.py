"""Pipeline configuration files (YAML) and building stages from them.

The file format::

    top_k: 10            # optional: passages resolved per query at the end
    stages:
      - bm25: {index: idx, k: 100}
      - dense: {index: idx, k: 100}
      - fuse: {method: rrf, k: 60}

Errors name the file and the line of the offending stage.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import yaml

from ragline.engine.atomic import atomic_write_text
from ragline.engine.data.text import read_text
from ragline.engine.errors import ConfigError
from ragline.engine.registry import STAGES, lookup

_PIPELINE_KEYS = {"stages", "top_k", "batch_size"}


def load_pipeline(path: str | Path, pipeline_class: type, defaults: dict[str, Any] | None = None):
    """``pipeline_class(stages, **options)`` from the file (``Pipeline.load``
    passes itself, so this module never imports the pipeline). ``defaults``
    fill parameters a stage accepts but the file leaves out (``ragline ask
    DIR`` hands every index-reading stage ``index: DIR``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("pipeline file not found", path=path)
    try:
        root = yaml.compose(read_text(path), Loader=yaml.SafeLoader)  # bytes not UTF-8: an InputError at file:line
    except RecursionError:
        raise ConfigError("not valid YAML: nested too deeply", path=path) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise ConfigError(
            f"not valid YAML: {getattr(err, 'problem', None) or err}",
            path=path,
            line=mark.line + 1 if mark else None,
        ) from None
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError("expected a mapping with a 'stages' list", path=path, line=_line(root))
    _check_plain_keys(root, path)
    top = {key.value: value for key, value in root.value}
    unknown = set(top) - _PIPELINE_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)}; expected {sorted(_PIPELINE_KEYS)}", path=path, line=_line(root))
    stages_node = top.get("stages")
    if not isinstance(stages_node, yaml.SequenceNode) or not stages_node.value:
        raise ConfigError("'stages' must be a non-empty list", path=path, line=_line(stages_node or root))
    stages = [_build_stage(item, path, defaults or {}) for item in stages_node.value]
    options = {k: _plain(v, path) for k, v in top.items() if k != "stages"}
    try:
        return pipeline_class(stages, **options)
    except TypeError as err:
        raise ConfigError(str(err), path=path, line=_line(root)) from None
    except ConfigError as err:
        raise ConfigError(str(err), path=path) from None


def _build_stage(item: yaml.Node, path: Path, defaults: dict[str, Any]):
    line = _line(item)
    if not isinstance(item, yaml.MappingNode) or len(item.value) != 1:
        raise ConfigError("each stage is a one-key mapping, e.g. '- bm25: {index: idx}'", path=path, line=line)
    _check_plain_keys(item, path)
    key_node, params_node = item.value[0]
    name = key_node.value
    params = _plain(params_node, path)
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ConfigError(f"parameters of stage {name!r} must be a mapping", path=path, line=line)
    try:
        cls = lookup(STAGES, name)
    except ConfigError as err:
        raise ConfigError(str(err), path=path, line=line) from None
    _check_params(cls, name, params, path, line)
    accepted = inspect.signature(cls.__init__).parameters
    params = {**{k: v for k, v in defaults.items() if k in accepted}, **params}
    try:
        return cls(**params)
    except ConfigError as err:
        # Stages name themselves in their messages ("bm25: k1: ..."); say it once.
        message = str(err) if str(err).startswith(f"{name}:") else f"stage {name!r}: {err}"
        raise ConfigError(message, path=path, line=line) from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"stage {name!r}: {err}", path=path, line=line) from None


def _check_params(cls: type, name: str, params: dict, path: Path, line: int | None) -> None:
    signature = inspect.signature(cls.__init__)
    accepted = [p for p in signature.parameters if p != "self"]
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"stage {name!r} has no parameter(s) {unknown}; it takes {accepted}", path=path, line=line
        )


def _check_plain_keys(mapping: yaml.MappingNode, path: Path) -> None:
    """Keys that name something are plain words: a list or a mapping as a key
    (YAML allows both) cannot be looked up."""
    for key, _ in mapping.value:
        if not isinstance(key, yaml.ScalarNode):
            raise ConfigError("a key here must be a plain name, not a list or a mapping", path=path, line=_line(key))


def _plain(node: yaml.Node, path: Path) -> Any:
    try:
        return yaml.SafeLoader("").construct_document(node)
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML: {getattr(err, 'problem', None) or err}", path=path, line=_line(node)) from None
    except ValueError:  # an integer longer than int() converts (4300 digits)
        raise ConfigError("a number with too many digits", path=path, line=_line(node)) from None
    except RecursionError:
        raise ConfigError("not valid YAML: nested too deeply", path=path, line=_line(node)) from None


def _line(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


def save_pipeline_config(config: dict[str, Any], path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False, default_flow_style=None))
