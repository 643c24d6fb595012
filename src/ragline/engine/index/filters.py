"""Metadata filters: ``year>=2020``, ``lang=en``, ``tag in (a, b)``, joined by
``and``, ``or``, ``not`` and parentheses.

A filter is parsed once into a small tree, checked against the fields the
index's documents carry (an unknown field, or a value of the wrong kind for
its field, is an error, not an empty result), and compiled into an SQL
condition over the document store's metadata. The store answers it with the
passages that pass; each retriever then searches only those (Lucene with a
filter clause, FAISS with an id selector), so a filtered top ``k`` equals the
unfiltered ranking restricted to the passages that pass.

Grammar (words are case-insensitive)::

    filter     := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | "(" filter ")" | comparison
    comparison := FIELD OP VALUE | FIELD "in" "(" VALUE ("," VALUE)* ")"
    OP         := "=" | "==" | "!=" | "<" | "<=" | ">" | ">="
    VALUE      := a number, true, false, a 'quoted' or "quoted" string, or a bare word

A field whose documents hold lists (``tags: [a, b]``) matches ``=`` and ``in``
when any element does. Several filters given together (``--filter`` twice, a
list in YAML) must all hold. Field names may hold any character (quote them:
``'a"b'=3``, ``année>=2010`` needs no quotes).

Limits, far above what a person writes and checked before any SQL is made:
``MAX_NESTING`` parentheses and ``not`` inside one another,
``MAX_COMPARISONS`` comparisons, ``MAX_VALUES`` values in all. A chain of
``or`` (or ``and``) is one node however long, compiled to a balanced SQL
condition, so a thousand comparisons joined by ``or`` nest four deep.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Union

from ragline.engine.errors import ConfigError


class FilterError(ConfigError):
    """A filter that cannot be parsed or does not fit the index's metadata."""


MAX_NESTING = 32
MAX_COMPARISONS = 4096
MAX_VALUES = 12_000
# What SQLite binds at most in one statement; a filter within the limits above
# may still need more (a list field binds each value twice, each comparison
# its field path too), and is then refused when it is checked.
MAX_PARAMETERS = 32_766
_INT64 = (-(2**63), 2**63 - 1)


# Kinds of metadata values, as recorded per field in the document store.
NUMBER, STRING, BOOL, LIST, OTHER = "number", "string", "bool", "list", "other"


def value_kind(value: Any) -> str:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, (int, float)):
        return NUMBER
    if isinstance(value, str):
        return STRING
    if isinstance(value, list) and all(not isinstance(v, (list, dict)) for v in value):
        return LIST
    return OTHER


@dataclass(frozen=True)
class Comparison:
    field: str
    op: str  # = != < <= > >= in
    values: tuple[Any, ...]  # one value, or the members of ``in``
    bare: tuple[str | None, ...]  # each value as written when unquoted, else None


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True, init=False)
class Both:  # and: every operand holds
    operands: tuple[Node, ...]

    def __init__(self, *operands: Node):
        object.__setattr__(self, "operands", _flat(Both, operands))


@dataclass(frozen=True, init=False)
class Either:  # or: some operand holds
    operands: tuple[Node, ...]

    def __init__(self, *operands: Node):
        object.__setattr__(self, "operands", _flat(Either, operands))


def _flat(kind: type, operands: tuple) -> tuple:
    """``a and (b and c)`` is one node of three operands."""
    return tuple(inner for node in operands for inner in (node.operands if isinstance(node, kind) else (node,)))


Node = Union[Comparison, Not, Both, Either]


def parse_filters(filters: str | Iterable[str] | None) -> Node | None:
    """One tree for all of ``filters`` (which must all hold), or ``None`` for no filter."""
    if filters is None:
        return None
    texts = [filters] if isinstance(filters, str) else list(filters)
    tree = None
    for text in texts:
        if not isinstance(text, str):
            raise FilterError(f"a filter is a string like 'year>=2020', not {text!r}")
        node = _Parser(text).parse()
        tree = node if tree is None else Both(tree, node)
    return tree


# ---------------------------------------------------------------------- parsing

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<op><=|>=|!=|==|=|<|>)
    | (?P<punct>[(),])
    | '(?P<single>(?:[^'\\]|\\.)*)'
    | "(?P<double>(?:[^"\\]|\\.)*)"
    | (?P<word>[^\s()<>=!,'"]+)
    )""", re.VERBOSE)
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_KEYWORDS = {"and", "or", "not", "in"}


@dataclass(frozen=True)
class _Token:
    kind: str  # op, punct, string, word, end
    text: str
    column: int  # 1-based, for error messages


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = self._tokenize(text)
        self.at = 0
        self.depth = 0
        self.comparisons = 0
        self.values = 0

    def _tokenize(self, text: str) -> list[_Token]:
        tokens, position = [], 0
        while position < len(text):
            if not text[position:].strip():
                break
            match = _TOKEN.match(text, position)
            if match is None or match.end() == position:
                column = position + len(text[position:]) - len(text[position:].lstrip()) + 1
                raise self._error(f"unexpected {text[column - 1]!r}", column)
            kind = match.lastgroup
            column = match.start(kind) + 1
            if kind in ("single", "double"):
                tokens.append(_Token("string", re.sub(r"\\(.)", r"\1", match.group(kind)), column))
            else:
                tokens.append(_Token(kind, match.group(kind), column))
            position = match.end()
        tokens.append(_Token("end", "", len(text) + 1))
        return tokens

    def _error(self, message: str, column: int) -> FilterError:
        return FilterError(f"filter {self.text!r}, column {column}: {message}")

    def _peek(self) -> _Token:
        return self.tokens[self.at]

    def _next(self) -> _Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def _is_word(self, word: str) -> bool:
        token = self._peek()
        return token.kind == "word" and token.text.lower() == word

    def parse(self) -> Node:
        if self._peek().kind == "end":
            raise self._error("empty filter", 1)
        node = self._or()
        token = self._peek()
        if token.kind != "end":
            raise self._error(f"expected 'and', 'or' or the end, found {token.text!r}", token.column)
        return node

    def _or(self) -> Node:
        return self._chain("or", self._and, Either)

    def _and(self) -> Node:
        return self._chain("and", self._not, Both)

    def _chain(self, word: str, operand, node: type) -> Node:
        """``operand (word operand)*`` as one n-ary ``node`` (the operand alone if there is one)."""
        operands = [operand()]
        while self._is_word(word):
            self._next()
            operands.append(operand())
        return operands[0] if len(operands) == 1 else node(*operands)

    def _not(self) -> Node:
        token = self._peek()
        if self._is_word("not") or (token.kind == "punct" and token.text == "("):
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise self._error(f"nested more than {MAX_NESTING} deep (parentheses and 'not')", token.column)
            self._next()
            if token.kind == "punct":
                node = self._or()
                self._expect(")")
            else:
                node = Not(self._not())
            self.depth -= 1
            return node
        return self._comparison()

    def _expect(self, punct: str) -> None:
        token = self._next()
        if token.kind != "punct" or token.text != punct:
            found = "the end" if token.kind == "end" else repr(token.text)
            raise self._error(f"expected {punct!r}, found {found}", token.column)

    def _comparison(self) -> Comparison:
        self.comparisons += 1
        if self.comparisons > MAX_COMPARISONS:
            raise self._error(f"more than {MAX_COMPARISONS} comparisons", self._peek().column)
        field = self._next()
        if field.kind not in ("word", "string") or (field.kind == "word" and field.text.lower() in _KEYWORDS):
            found = "the end" if field.kind == "end" else repr(field.text)
            raise self._error(f"expected a field name, found {found}", field.column)
        if self._is_word("in"):
            self._next()
            self._expect("(")
            values = [self._value()]
            while self._peek().kind == "punct" and self._peek().text == ",":
                self._next()
                values.append(self._value())
            self._expect(")")
            return Comparison(field.text, "in", tuple(v for v, _ in values), tuple(b for _, b in values))
        op = self._next()
        if op.kind != "op":
            found = "the end" if op.kind == "end" else repr(op.text)
            raise self._error(f"expected an operator (= != < <= > >= in) after {field.text!r}, found {found}", op.column)
        value, bare = self._value()
        return Comparison(field.text, "=" if op.text == "==" else op.text, (value,), (bare,))

    def _value(self) -> tuple[Any, str | None]:
        """The value, and its text when written without quotes."""
        self.values += 1
        if self.values > MAX_VALUES:
            raise self._error(f"more than {MAX_VALUES} values", self._peek().column)
        token = self._next()
        if token.kind == "string":
            return token.text, None
        if token.kind != "word":
            found = "the end" if token.kind == "end" else repr(token.text)
            raise self._error(f"expected a value, found {found}", token.column)
        lowered = token.text.lower()
        if lowered in ("true", "false"):
            return lowered == "true", token.text
        if re.fullmatch(r"[+-]?\d+", token.text):
            number = int(token.text)
            # Past 64 bits SQLite cannot bind it as a number: it is text (a
            # string field's long id matches; a number field says it holds numbers).
            return (number if _INT64[0] <= number <= _INT64[1] else token.text), token.text
        if _NUMBER.fullmatch(token.text):
            return float(token.text), token.text
        return token.text, token.text


# ------------------------------------------------------------- checking, SQL

def compile_filter(tree: Node, fields: dict[str, set[str]]) -> tuple[str, list[Any]]:
    """``(SQL condition, parameters)`` over a ``metadata`` column of JSON
    objects, after checking every comparison against ``fields`` (field name →
    kinds of value its documents hold)."""
    condition, parameters = _compile(tree, fields)
    if len(parameters) > MAX_PARAMETERS:
        raise FilterError(f"the filter needs {len(parameters):,} SQL parameters and the document store takes at most "
                          f"{MAX_PARAMETERS:,}: use fewer values or comparisons")
    return condition, parameters


def _compile(tree: Node, fields: dict[str, set[str]]) -> tuple[str, list[Any]]:
    if isinstance(tree, (Both, Either)):
        parts = [_compile(operand, fields) for operand in tree.operands]
        return _balanced([sql for sql, _ in parts], " AND " if isinstance(tree, Both) else " OR "), [
            p for _, parameters in parts for p in parameters]
    if isinstance(tree, Not):
        inner, parameters = _compile(tree.operand, fields)
        return f"({inner} IS NOT 1)", parameters  # conditions are 1, 0 or NULL (absent): NULL counts as false
    return _compile_comparison(tree, fields)


def _balanced(parts: list[str], joiner: str, run: int = 8) -> str:
    """``parts`` joined, grouped as a balanced tree: SQLite parses ``a OR b OR
    c ...`` into an expression as deep as the chain is long (and refuses
    past 1,000); grouped in runs of ``run``, a chain of n is log(n) deep."""
    if len(parts) <= run:
        return "(" + joiner.join(parts) + ")"
    step = -(-len(parts) // run)  # ceil: at most `run` groups
    return _balanced([_balanced(parts[i:i + step], joiner, run) for i in range(0, len(parts), step)], joiner, run)


def _compile_comparison(comparison: Comparison, fields: dict[str, set[str]]) -> tuple[str, list[Any]]:
    name, op = comparison.field, comparison.op
    if name not in fields:
        known = ", ".join(sorted(fields)[:20]) or "none: the index's documents carry no metadata"
        raise FilterError(f"unknown metadata field {name!r} (known fields: {known})")
    kinds = fields[name]
    values = [_as_kind(name, kinds, value, bare) for value, bare in zip(comparison.values, comparison.bare)]
    value_of, type_of, elements_of, path = _field_access(name)
    if op in ("<", "<=", ">", ">="):
        kind = value_kind(values[0])
        if BOOL in kinds or LIST in kinds or value_kind(comparison.values[0]) == BOOL:
            raise FilterError(f"{name!r} {op} needs a number or a string field, and a value of that kind")
        # Only values of the comparison's own kind take part: SQLite would
        # otherwise order every number below every string.
        sql_type = "('integer', 'real')" if kind == NUMBER else "('text')"
        return (f"({type_of} IN {sql_type} AND {value_of} {op} ?)", [path, path, values[0]])
    members = ",".join("?" * len(values))
    scalar = f"{value_of} IN ({members})"
    if LIST in kinds:
        listed = f"EXISTS (SELECT 1 FROM {elements_of} AS element WHERE element.value IN ({members}))"
        condition = f"(CASE {type_of} WHEN 'array' THEN {listed} ELSE {scalar} END)"
        parameters = [path, path, *values, path, *values]
    else:
        condition, parameters = f"({scalar})", [path, *values]
    if op == "!=":
        return f"({type_of} IS NOT NULL AND NOT {condition})", [path, *parameters]
    return condition, parameters


def _field_access(name: str) -> tuple[str, str, str, str]:
    """SQL for a field's value, its JSON type and its elements, each taking
    one parameter (the last item). A JSON path reads keys as stored (UTF-8,
    unescaped: ``json.dumps`` with its default ``\\u00e9`` escapes matched
    nothing); SQLite's paths cannot hold a ``"``, so such a name is looked up
    among the object's keys instead, as are names with a backslash or a
    control character."""
    if name.isprintable() and '"' not in name and "\\" not in name:
        path = "$." + json.dumps(name, ensure_ascii=False)
        return "json_extract(metadata, ?)", "json_type(metadata, ?)", "json_each(metadata, ?)", path
    member = "(SELECT field.value FROM json_each(metadata) AS field WHERE field.key = ?)"
    kind = "(SELECT field.type FROM json_each(metadata) AS field WHERE field.key = ?)"
    return member, kind, f"json_each({member})", name


def _as_kind(name: str, kinds: set[str], value: Any, bare: str | None) -> Any:
    """``value`` as the kind of value the field holds, or a ``FilterError``.
    A bare word that reads as a number or a boolean compares with a string
    field as written (``zip=02139`` on string zip codes)."""
    kind = value_kind(value)
    element_kinds = kinds - {LIST, OTHER}
    if LIST in kinds:  # list elements may be of any scalar kind
        element_kinds |= {NUMBER, STRING, BOOL}
    if kind in element_kinds:
        return int(value) if kind == BOOL else value  # SQLite's json_extract reads true/false as 1/0
    if bare is not None and STRING in element_kinds:
        return bare
    held = " or ".join(sorted(kinds)) if kinds else "no"
    raise FilterError(f"metadata field {name!r} holds {held} values, and {bare or repr(value)} is a {kind}")
