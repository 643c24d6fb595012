"""The generate stage's settings are typed and checked when the pipeline is
built: its backend's options against the backend's constructor, kv_options
against passage KV reuse's, and the rules that span the mode and its
options. One line names the field; nothing fails later as a traceback."""

from __future__ import annotations

import pytest
from tiny_causal_lms import passages, query

from ragline.engine.errors import ConfigError
from ragline.engine.pipeline import Pipeline
from ragline.generators.generate import Generate


@pytest.mark.parametrize(("settings", "message"), [
    ({"kv_reuse": "block", "kv_options": {"bogus": 1}},
     r"generate: kv_options.bogus: not a setting of kv reuse; known: sink_tokens, memory_bytes"),
    ({"kv_reuse": "block", "kv_options": {"memory_bytes": -5}},
     r"generate: kv_options.memory_bytes: input should be greater than or equal to 0 \(got -5\)"),
    ({"kv_reuse": "block", "kv_options": {"blend_fraction": 0.2}},
     r"generate: kv_options.blend_fraction: only kv_reuse 'blend' reads it \(kv_reuse is 'block'\)"),
    ({"kv_reuse": "sink", "kv_options": {"blend_check_layer": 2}},
     r"generate: kv_options.blend_check_layer: only kv_reuse 'blend' reads it"),
    ({"kv_reuse": "blend", "kv_options": {"sink_tokens": 4}},
     r"generate: kv_options.sink_tokens: only kv_reuse 'sink' reads it"),
    ({"kv_reuse": "blend", "kv_options": {"blend_fraction": 1.5}},
     r"generate: kv_options.blend_fraction: input should be less than or equal to 1"),
    ({"kv_reuse": "blend", "kv_options": {"blend_check_layer": 0}},
     r"generate: kv_options.blend_check_layer: input should be greater than or equal to 1"),
    ({"kv_reuse": "block", "kv_options": {"shift": "fast"}},
     r"generate: kv_options.shift: input should be 'auto', 'torch' or 'triton'"),
    ({"kv_options": {"memory_bytes": 1}},
     r"generate: kv_options: given, but kv_reuse is 'none' and reads none of them"),
    ({"kv_reuse": "block", "kv_options": "big"},
     r"generate: kv_options: input should be a valid dictionary \(got .big.\)"),
    ({"options": {"bogus": 1}}, r"generate: options.bogus: not a setting of the hf backend; known: device, dtype"),
    ({"options": {"batch_size": "8"}}, r"generate: options.batch_size: input should be a valid integer"),
    ({"backend": "http", "options": {"device": "cpu"}}, r"generate: options.device: not a setting of the http backend"),
    ({"backend": "http", "options": {"timeout": 0}}, r"generate: options.timeout: input should be greater than 0"),
    ({"backend": "vllm", "options": {"gpu_memory_utilization": 2}},
     r"generate: options.gpu_memory_utilization: input should be less than or equal to 1"),
    ({"backend": "vllm", "kv_reuse": "block"}, r"generate: kv_reuse: 'block' runs on the hf backend"),
])
def test_bad_settings_are_one_line_naming_the_field(settings, message):
    with pytest.raises(ConfigError, match=message):
        Generate(**settings)


def test_a_kv_directory_that_is_a_file_is_refused_when_the_stage_is_made(tmp_path):
    file = tmp_path / "not-a-folder"
    file.write_text("x")
    with pytest.raises(ConfigError, match=rf"generate: kv_options.directory: {file} exists and is not a folder"):
        Generate(kv_reuse="block", kv_options={"directory": str(file)})
    Generate(kv_reuse="block", kv_options={"directory": str(tmp_path / "new")})  # made when first written


def test_the_same_errors_come_from_a_yaml_file_with_its_line(tmp_path):
    config = tmp_path / "p.yaml"
    config.write_text("stages:\n  - generate: {kv_reuse: block, kv_options: {memory_bytes: -5}}\n")
    with pytest.raises(ConfigError, match=r"p.yaml:2: generate: kv_options.memory_bytes"):
        Pipeline.load(config)


def test_a_check_layer_beyond_the_model_is_refused_at_warm_up_with_its_name(tiny_lm):
    stage = Generate(model=tiny_lm, passages=3, max_new_tokens=4, options={"device": "cpu"}, kv_reuse="blend",
                     kv_options={"blend_check_layer": 99})
    with pytest.raises(ConfigError, match=r"generate: kv_options.blend_check_layer: 99 is beyond .*'s layers "
                                          r"\(it has \d+: 0 to \d+\)"):
        Pipeline([stage]).run([query(passages())])


def test_good_settings_are_accepted_and_round_trip():
    stage = Generate(options={"device": "cpu", "batch_size": 2}, kv_reuse="blend",
                     kv_options={"blend_fraction": 0.5, "blend_check_layer": 1, "memory_bytes": 1 << 20})
    assert Generate(**stage.to_config()).to_config() == stage.to_config()
    Generate(backend="http", options={"url": "http://127.0.0.1:9/v1", "timeout": 5.0, "retries": 0})
