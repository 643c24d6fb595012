"""Metadata filters: parsing, their SQL against a Python reference, the
readers that carry metadata, and filtered retrieval equal to post-filtering
a deep unfiltered ranking (BM25 in Lucene, dense with a FAISS id selector)."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from ragline.engine.errors import InputError
from ragline.engine.index.docstore import DocStore
from ragline.engine.index.filters import Both, Comparison, Either, FilterError, Not, parse_filters
from ragline.engine.types import Document, Passage

LANGS = ["en", "de", "fr"]
TAGS = ["a", "b", "c", "d"]


def synthetic_metadata(i: int) -> dict:
    rng = random.Random(i)
    metadata = {"year": 1990 + rng.randrange(35), "lang": rng.choice(LANGS), "tags": rng.sample(TAGS, rng.randrange(3)),
                "score": round(rng.random(), 3), "zip": f"{rng.randrange(100):05d}"}
    if i % 5 == 0:
        metadata["draft"] = rng.random() < 0.5
    if i % 11 == 0:
        del metadata["lang"]  # some documents lack a field
    return metadata


# A Python reading of the filters' meaning, to check the SQL against.
def reference(node, metadata: dict) -> bool:
    if isinstance(node, Both):
        return all(reference(operand, metadata) for operand in node.operands)
    if isinstance(node, Either):
        return any(reference(operand, metadata) for operand in node.operands)
    if isinstance(node, Not):
        return not reference(node.operand, metadata)
    if node.field not in metadata:
        return False
    value = metadata[node.field]
    wanted = [b if isinstance(value, str) and b is not None and not isinstance(v, str) else v
              for v, b in zip(node.values, node.bare)]
    members = value if isinstance(value, list) else [value]
    if node.op in ("=", "in"):
        return any(m == w and type(m) is type(w) or (isinstance(m, (int, float)) and not isinstance(m, bool)
                   and isinstance(w, (int, float)) and not isinstance(w, bool) and m == w)
                   for m in members for w in wanted)
    if node.op == "!=":
        return not any(m == w for m in members for w in wanted)
    compare = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}
    same_kind = type(value) is type(wanted[0]) or (isinstance(value, (int, float)) and isinstance(wanted[0], (int, float)))
    return same_kind and compare[node.op](value, wanted[0])


FILTERS = [
    "year>=2010", "year<2000", "year = 2005", "year == 2005", "year != 2005", "lang=en", "lang != en",
    "lang in (en, de)", "not lang=en", "tags=a", "tags in (a, c)", "not tags=b", "draft=true", "draft=false",
    "not draft=true", "score<0.5", "score>=0.25 and score<=0.75", "zip=00042", "zip>='00050'",
    "year>=2010 and (lang=en or tags=d)", "(year<2000 or year>2015) and not (lang in (fr))",
    "'lang' = \"de\"", "year >= 2e3", "NOT lang = en AND year < 2020 OR tags = c",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "docs.sqlite"
    store = DocStore(path, create=True)
    store.add([Passage(f"d{i}", f"d{i}", "text", metadata=synthetic_metadata(i)) for i in range(300)]
              + [Passage("bare", "bare", "no metadata")])
    store.commit()
    yield store
    store.close()


@pytest.mark.parametrize("text", FILTERS)
def test_filter_sql_agrees_with_the_python_reading(store, text):
    tree = parse_filters(text)
    expected = {f"d{i}" for i in range(300) if reference(tree, synthetic_metadata(i))}
    if reference(tree, {}):
        expected.add("bare")
    selection = store.select(tree)
    assert selection.ids == expected
    assert selection.rows == tuple(sorted(int(pid[1:]) for pid in expected if pid != "bare")) + (
        (300,) if "bare" in expected else ())
    assert 0 < len(expected) < 301 or text in ("draft=false",)  # each filter really selects something


def test_field_kinds_are_recorded(store):
    assert store.metadata_fields == {"year": {"number"}, "lang": {"string"}, "tags": {"list"}, "score": {"number"},
                                     "zip": {"string"}, "draft": {"bool"}}


def test_several_filters_must_all_hold(store):
    both = store.select(parse_filters(["year>=2010", "lang=en"])).ids
    assert both == store.select(parse_filters("year>=2010")).ids & store.select(parse_filters("lang=en")).ids


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty filter"),
    ("year>=", "column 7: expected a value, found the end"),
    ("year 2020", "column 6: expected an operator"),
    ("(year>1", "expected ')', found the end"),
    ("year>1 lang=en", "expected 'and', 'or' or the end, found 'lang'"),
    ("lang in en", "expected '(', found 'en'"),
    ("and=1", "expected a field name, found 'and'"),
    ("year ~ 3", "column 6: expected an operator (= != < <= > >= in) after 'year', found '~'"),
    ("lang = 'en", "column 8: unexpected \"'\""),
])
def test_malformed_filters_say_where(text, message):
    with pytest.raises(FilterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_filters(text)


@pytest.mark.parametrize(("text", "message"), [
    ("yr>=2020", r"unknown metadata field 'yr' \(known fields: draft, lang, score, tags, year, zip\)"),
    ("year>=en", "'year' holds number values, and en is a string"),
    ("lang>3", "'lang' holds string values"),  # a bare number reads as text for a string field: allowed...
    ("draft>true", "needs a number or a string field"),
    ("tags>a", "needs a number or a string field"),
    ("draft=3", "'draft' holds bool values, and 3 is a number"),
])
def test_filters_that_do_not_fit_the_metadata_are_refused(store, text, message):
    if text == "lang>3":  # ...so it is no error: it compares as the text '3'
        assert store.select(parse_filters(text)).ids
        return
    with pytest.raises(FilterError, match=message):
        store.select(parse_filters(text))


def test_parse_tree_shape():
    tree = parse_filters("a=1 or b=2 and not c in (x, 'y z')")
    assert tree == Either(Comparison("a", "=", (1,), ("1",)),
                          Both(Comparison("b", "=", (2,), ("2",)),
                               Not(Comparison("c", "in", ("x", "y z"), ("x", None)))))
    # A chain is one node, however it is grouped.
    assert parse_filters("a=1 or b=2 or c=3") == parse_filters("(a=1 or b=2) or c=3") == Either(
        *(Comparison(name, "=", (i,), (str(i),)) for i, name in enumerate("abc", 1)))


@pytest.fixture(scope="module")
def unusual_store(tmp_path_factory):
    """Field names a JSON path spells badly: accents, other scripts, quotes, backslashes."""
    store = DocStore(tmp_path_factory.mktemp("unusual") / "docs.sqlite", create=True)
    store.add([Passage(f"p{i}", f"p{i}", "text", metadata={"année": 2000 + i, "语言": "en" if i % 2 else "zh",
                                                              'a"b': i % 3, "back\\slash": [i % 4, 9], "x.y": i})
               for i in range(40)])
    store.commit()
    yield store
    store.close()


@pytest.mark.parametrize(("text", "expected"), [
    ("année>=2010", {f"p{i}" for i in range(10, 40)}),
    ("not année>=2010", {f"p{i}" for i in range(10)}),
    ("语言=en", {f"p{i}" for i in range(1, 40, 2)}),
    ("'a\"b'=2", {f"p{i}" for i in range(40) if i % 3 == 2}),
    ("'a\"b' != 2 and année < 2006", {f"p{i}" for i in range(6) if i % 3 != 2}),
    ("'back\\\\slash' = 3", {f"p{i}" for i in range(40) if i % 4 == 3}),
    ("'back\\\\slash' in (9)", {f"p{i}" for i in range(40)}),
    ("'x.y' = 7", {"p7"}),
])
def test_field_names_with_any_characters_match(unusual_store, text, expected):
    assert unusual_store.select(parse_filters(text)).ids == expected


def test_a_thousand_ored_comparisons_work_and_nest_nothing(store):
    text = " or ".join(f"year={1990 + i % 35}" for i in range(1000))
    assert store.select(parse_filters(text)).ids == store.select(parse_filters("year>=1990")).ids
    text = " and ".join(f"year!={3000 + i}" for i in range(1000))
    assert len(store.select(parse_filters(text)).ids) == 300


@pytest.mark.parametrize(("text", "message"), [
    ("(" * 400 + "year=1" + ")" * 400, r"column 33: nested more than 32 deep"),
    ("not " * 400 + "year=1", r"nested more than 32 deep"),
    (" or ".join(["year=1"] * 5000), r"more than 4096 comparisons"),
    ("year in (" + ",".join(["1"] * 13000) + ")", r"more than 12000 values"),
])
def test_the_filter_languages_limits_are_one_clear_error(text, message):
    with pytest.raises(FilterError, match=message):
        parse_filters(text)


def test_a_filter_needing_more_sql_parameters_than_sqlite_binds_is_refused_when_checked(store):
    from ragline.engine.index.filters import compile_filter

    # Within the parsing limits, but a list field binds every value twice.
    text = "tags in (" + ",".join(f"v{i}" for i in range(8_000)) + ") or " + " or ".join(["tags != a"] * 3000)
    with pytest.raises(FilterError, match=r"needs [\d,]+ SQL parameters and the document store takes at most 32,766"):
        compile_filter(parse_filters(text), store.metadata_fields)


def test_a_number_past_64_bits_is_text(store):
    tree = parse_filters("zip = 123456789012345678901234")  # a string field: compared as written
    assert store.select(tree).ids == set()
    with pytest.raises(FilterError, match="'year' holds number values, and 123456789012345678901234 is a string"):
        store.select(parse_filters("year = 123456789012345678901234"))


def test_the_largest_filters_within_the_limits_run(store):
    store.select(parse_filters("(" * 32 + "year>1" + ")" * 32))
    assert store.select(parse_filters("not " * 32 + "year>2000")).ids == store.select(parse_filters("year>2000")).ids
    # The deepest mix: 'not (' and 'or (' alternating to the limit.
    store.select(parse_filters("not (year<0 or (" * 10 + "year>1" + "))" * 10))  # 30 deep
    store.select(parse_filters(" or ".join(f"tags in ({i})" for i in range(4000))))
    store.select(parse_filters("year in (" + ",".join(str(1000 + i) for i in range(12_000)) + ")"))


# ------------------------------------------------------------------ readers

def test_jsonl_metadata_is_read_and_checked(tmp_path):
    from ragline.engine.data.corpus import read_corpus

    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"id": "1", "text": "t", "metadata": {"year": 2020}}) + "\n"
                    + json.dumps({"id": "2", "text": "t", "metadata": {}}) + "\n")
    assert [d.metadata for d in read_corpus(path)] == [{"year": 2020}, None]
    path.write_text(json.dumps({"id": "1", "text": "t"}) + "\n" + json.dumps({"id": "2", "text": "t", "metadata": [1]}) + "\n")
    with pytest.raises(InputError, match=r"c.jsonl:2: 'metadata' must be a JSON object"):
        list(read_corpus(path))


def test_front_matter_is_metadata(tmp_path):
    from ragline.engine.data.corpus import read_corpus

    (tmp_path / "a.md").write_text("---\ntitle: Front\nyear: 2021\nzip: '02139'\ndraft: true\ntags: [x, y]\n---\n"
                                   "# Heading\nbody\n")
    (tmp_path / "b.md").write_text("# Only a heading\nbody\n")
    (tmp_path / "c.md").write_text("---\n: [unclosed\n---\nbody\n")
    documents = read_corpus(tmp_path, "dir")
    a, b = next(documents), next(documents)
    assert (a.title, a.text, a.metadata) == ("Front", "# Heading\nbody\n",
                                             {"year": 2021, "zip": "02139", "draft": True, "tags": ["x", "y"]})
    assert (b.title, b.metadata) == ("Only a heading", None)
    with pytest.raises(InputError, match=r"c.md:\d+: malformed front matter"):
        list(read_corpus(tmp_path, "dir"))


def test_chunks_carry_their_documents_metadata():
    from ragline.engine.data.chunking import chunk_document

    chunks = chunk_document(Document("d", "one two three four five", metadata={"lang": "en"}), window=2)
    assert len(chunks) == 3 and all(c.metadata == {"lang": "en"} for c in chunks)


# ---------------------------------------------------- retrieval on real data

VASWANI_FILTERS = ["year>=2010", "lang=en", "lang in (de, fr) and year<2005", "tags=a or draft=true", "not tags=b",
                   "year=1995"]


@pytest.fixture(scope="module")
def tagged_corpus(vaswani, tmp_path_factory):
    """The first 600 Vaswani documents with synthetic metadata."""
    import itertools

    from ragline.engine.data.corpus import read_corpus

    path = tmp_path_factory.mktemp("tagged") / "corpus.jsonl"
    docs = itertools.islice(read_corpus(vaswani / "doc-text.trec"), 600)
    path.write_text("".join(json.dumps({"id": d.id, "text": d.text, "metadata": synthetic_metadata(int(d.id))}) + "\n"
                            for d in docs))
    return path


@pytest.fixture(scope="module")
def tagged_index(tagged_corpus, tmp_path_factory):
    from ragline.engine.index.build import build_index

    out = tmp_path_factory.mktemp("tagged-index") / "idx"
    build_index(tagged_corpus, out, {"bm25": {}, "dense": {}})
    return out


def filtered_equals_post_filtered(retriever_filtered, retriever_deep, queries, allowed, k, scores_within=0.0):
    # (search() is below run(), which applies the stage's filter: give it the selection)
    filtered = retriever_filtered.search(queries, k, allowed=retriever_filtered.selection())
    deep = retriever_deep.search(queries, 10_000)
    for got, full in zip(filtered, deep):
        expected = [(pid, score) for pid, score in full if pid in allowed][:k]
        assert [pid for pid, _ in got] == [pid for pid, _ in expected]
        assert all(abs(a - b) <= scores_within for (_, a), (_, b) in zip(got, expected))


@pytest.mark.parametrize("text", VASWANI_FILTERS)
def test_dense_filtered_search_equals_post_filtering(tagged_index, vaswani_queries, text):
    from ragline.retrievers.dense import Dense

    queries = [q for _, q in vaswani_queries[:20]]
    filtered, deep = Dense(str(tagged_index), k=10, filter=text), Dense(str(tagged_index))
    allowed = filtered.selection().ids
    assert 0 < len(allowed) < 600
    filtered_equals_post_filtered(filtered, deep, queries, allowed, 10, scores_within=1e-5)


@pytest.mark.parametrize("text", VASWANI_FILTERS)
def test_bm25_filtered_search_equals_post_filtering(tagged_index, vaswani_queries, text):
    from ragline.retrievers.bm25 import BM25

    queries = [q for _, q in vaswani_queries[:20]]
    filtered, deep = BM25(str(tagged_index), k=10, filter=text), BM25(str(tagged_index))
    allowed = filtered.selection().ids
    filtered_equals_post_filtered(filtered, deep, queries, allowed, 10, scores_within=1e-5)


def test_ivf_filtered_search_equals_post_filtering(tagged_corpus, vaswani_queries, tmp_path):
    from ragline.engine.index.build import build_index
    from ragline.retrievers.dense import Dense

    build_index(tagged_corpus, tmp_path / "ivf", {"dense": {"factory": "IVF16,Flat"}})
    queries = [q for _, q in vaswani_queries[:20]]
    for text in VASWANI_FILTERS[:3]:
        filtered, deep = Dense(str(tmp_path / "ivf"), k=10, nprobe=4, filter=text), Dense(str(tmp_path / "ivf"), nprobe=4)
        filtered_equals_post_filtered(filtered, deep, queries, filtered.selection().ids, 10, scores_within=1e-5)


def test_query_filters_and_stage_filters_both_hold(tagged_index):
    from ragline.engine.pipeline import Pipeline
    from ragline.engine.types import Query
    from ragline.retrievers.dense import Dense

    stage = Dense(str(tagged_index), k=50, filter="year>=2000")
    queries = [Query("1", "measurement of dielectric constant", filter="lang=en"),
               Query("2", "measurement of dielectric constant"),
               Query("3", "measurement of dielectric constant", filter="lang=de")]
    results = Pipeline([stage], top_k=50).run(queries)
    for query in results:
        assert query.passages and all(p.metadata["year"] >= 2000 for p in query.passages)
    assert all(p.metadata.get("lang") == "en" for p in results[0].passages)
    assert all(p.metadata.get("lang") == "de" for p in results[2].passages)
    assert {p.metadata.get("lang") for p in results[1].passages} >= {"en", "de"}


def test_filter_with_nothing_left_returns_no_hits(tagged_index):
    from ragline.retrievers.dense import Dense

    assert Dense(str(tagged_index), filter="year>3000").search(["x"], allowed=None)  # unfiltered: hits
    stage = Dense(str(tagged_index), filter="year>3000")
    assert stage.search(["x"], allowed=stage.selection()) == [[]]


def test_metadata_change_alone_is_an_update(tagged_corpus, tmp_path):
    from ragline.engine.index.build import build_index
    from ragline.engine.index.update import update_index
    from ragline.retrievers.bm25 import BM25

    lines = tagged_corpus.read_text().splitlines()[:50]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    build_index(corpus, tmp_path / "idx", {"bm25": {}})
    first = json.loads(lines[0])
    first["metadata"]["year"] = 3001
    corpus.write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
    meta = update_index(corpus, tmp_path / "idx")
    assert meta["last_update"]["replaced"] == 1
    assert BM25(str(tmp_path / "idx"), filter="year>3000").selection().ids == {first["id"]}


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ragline.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("flag", "message"), [
    ("yr>=2020", "error: unknown metadata field 'yr'"),
    ("year>=en", "error: metadata field 'year' holds number values, and en is a string"),
    ("year>=", "error: filter 'year>=', column 7: expected a value, found the end"),
])
def test_cli_bad_filters_get_one_line_and_exit_2(tagged_index, flag, message):
    result = run_cli("query", str(tagged_index), "dielectric", "--retriever", "dense", "--filter", flag)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [message] or result.stderr.strip().startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_query_with_filters(tagged_index):
    result = run_cli("query", str(tagged_index), "dielectric constant", "--retriever", "dense", "--json",
                     "--filter", "year>=2000", "--filter", "lang=en", "-k", "5")
    assert result.returncode == 0, result.stderr
    passages = json.loads(result.stdout)["passages"]
    assert len(passages) == 5
    assert all(p["metadata"]["year"] >= 2000 and p["metadata"]["lang"] == "en" for p in passages)
