"""The filter parser and compiler on generated input: any string is a clean
``FilterError`` or a selection equal to a Python reading of the same filter
over the same store. ``RAGLINE_FUZZ_EXAMPLES`` sets the examples per test
(25 here; ``make fuzz`` runs thousands)."""

from __future__ import annotations

import os
import random
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_metadata_filters import reference

from ragline.engine.index.docstore import DocStore
from ragline.engine.index.filters import FilterError, parse_filters
from ragline.engine.types import Passage

EXAMPLES = int(os.environ.get("RAGLINE_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=5), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Field names a path spells badly among the ordinary ones.
FIELDS = ["year", "lang", "tags", "score", "draft", "année", 'a"b', "x.y"]
LANGS = ["en", "de", "fr"]


def metadata_of(i: int) -> dict:
    rng = random.Random(i)
    metadata = {"year": 1990 + rng.randrange(35), "lang": rng.choice(LANGS), "tags": rng.sample("abcd", rng.randrange(3)),
                "score": round(rng.random(), 2), "année": rng.randrange(5), 'a"b': rng.choice(["p", "q"]),
                "x.y": rng.randrange(3)}
    if i % 4 == 0:
        metadata["draft"] = rng.random() < 0.5
    if i % 7 == 0:
        del metadata["lang"]
    return metadata


DOCUMENTS = 120


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = DocStore(tmp_path_factory.mktemp("fuzz-store") / "docs.sqlite", create=True)
    store.add([Passage(f"d{i}", f"d{i}", "text", metadata=metadata_of(i)) for i in range(DOCUMENTS)]
              + [Passage("bare", "bare", "no metadata")])
    store.commit()
    yield store
    store.close()


def quoted(name: str) -> str:
    return "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


values = st.one_of(st.integers(1985, 2030).map(str), st.integers(0, 5).map(str), st.sampled_from(LANGS),
                   st.sampled_from(["a", "b", "c", "d", "p", "q", "'p'", '"q"', "true", "false", "0.5", "2e3"]))
comparisons = st.builds(
    lambda field, op, value, members: f"{quoted(field) if not field.isalpha() else field} "
                                      + (f"in ({', '.join(members)})" if op == "in" else f"{op} {value}"),
    st.sampled_from(FIELDS), st.sampled_from(["=", "==", "!=", "<", "<=", ">", ">=", "in"]), values,
    st.lists(values, min_size=1, max_size=4))
filters = st.recursive(
    comparisons,
    lambda inner: st.one_of(
        st.builds(lambda a, b: f"{a} and {b}", inner, inner),
        st.builds(lambda a, b: f"{a} or {b}", inner, inner),
        st.builds(lambda a: f"not {a}", inner),
        st.builds(lambda a: f"({a})", inner)),
    max_leaves=12)
# Grammar-shaped text damaged by random edits, and plain noise.
noise = st.text(alphabet=st.sampled_from(list("()<>=!,'\" \\andortiyear2020xé")), max_size=60)


def check(store, text: str) -> None:
    try:
        tree = parse_filters(text)
        selection = store.select(tree)
    except FilterError:
        return  # a clean error, with its message
    expected = {f"d{i}" for i in range(DOCUMENTS) if reference(tree, metadata_of(i))}
    if reference(tree, {}):
        expected.add("bare")
    assert selection.ids == expected, text


@FUZZ
@given(text=filters)
def test_generated_filters_select_what_python_reads(store, text):
    check(store, text)


@FUZZ
@given(text=st.one_of(noise, st.builds(lambda f, cut, junk: f[:cut] + junk + f[cut:], filters,
                                       st.integers(0, 40), noise)))
def test_any_string_is_a_clean_error_or_a_correct_selection(store, text):
    check(store, text)
