"""docs/stages.md is generated from the stages' annotations: it must say what
the code says."""

from __future__ import annotations

from pathlib import Path

from ragline.engine.registry import STAGES, available
from ragline.engine.settings import Fraction, NonNegativeInt
from ragline.engine.stage_reference import describe, settings_of, stage_reference

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "stages.md"


def test_the_committed_stage_reference_is_current():
    assert REFERENCE.read_text(encoding="utf-8") == stage_reference(), "docs/stages.md is stale: run `make docs`"


def test_the_reference_lists_every_stage_with_inherited_settings():
    text = stage_reference()
    for name in available(STAGES):
        assert f"\n## {name}\n" in text
    from ragline.compressors.sentinel import Sentinel

    names = [parameter.name for parameter, _ in settings_of(Sentinel)]
    assert names[:2] == ["probe", "proxy"] and {"ratio", "budget", "passages"} <= set(names)


def test_annotations_read_as_a_person_writes_them():
    assert describe(NonNegativeInt) == "int ≥ 0"
    assert describe(Fraction | None) == "float > 0, ≤ 1 \\| None"
    assert describe(list[str] | None) == "list[str] \\| None"
