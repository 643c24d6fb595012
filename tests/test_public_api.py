"""What users write stays as it was across the src/ move and the new family
names: the top-level names, the YAML stage names and the command's verbs."""

from __future__ import annotations

from importlib.metadata import entry_points

import typer

import ragline

TOP_LEVEL = ["BM25", "CrossEncoderRerank", "Dense", "Fuse", "Generate", "Hit", "Index", "Passage", "Pipeline",
             "Query", "build_index", "update_index"]
STAGES = ["attention_rag", "attention_sort", "attnrank", "bm25", "cross_encoder", "dense", "embedding_sentences",
          "fuse", "generate", "icr", "leading_sentences", "random_sentences", "sentinel"]
VERBS = {"index", "query", "search", "run", "ask", "serve", "train", "calibrate", "eval", "convert", "build"}
SUB_VERBS = {"train": {"cross-encoder", "sentinel"}, "calibrate": {"attnrank", "heads"},
             "eval": {"beir", "posir", "qa", "compare"}, "convert": {"trec-to-beir", "hotpotqa-corpus"},
             "build": {"posir"}}


def test_the_top_level_names_import():
    for name in TOP_LEVEL:
        assert getattr(ragline, name) is not None, name
    assert set(TOP_LEVEL) <= set(ragline.__all__)


def test_the_yaml_stage_names_are_the_same_and_load():
    found = sorted(ep.name for ep in entry_points(group="ragline.stages"))
    assert found == STAGES
    for ep in entry_points(group="ragline.stages"):
        assert ep.load().name == ep.name


def test_the_commands_verbs_are_the_same():
    from ragline.cli.main import app, calibrate_app, train_app

    for plugin in entry_points(group="ragline.cli"):
        plugin.load()(app, {"train": train_app, "calibrate": calibrate_app})
    command = typer.main.get_command(app)
    assert set(command.commands) == VERBS
    for group, verbs in SUB_VERBS.items():
        assert set(command.commands[group].commands) == verbs, group
