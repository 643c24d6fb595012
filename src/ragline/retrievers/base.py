"""The shared shape of first-stage retrievers: ``search`` turns query texts
into ``(passage id, score)`` lists, and ``run`` turns those into hits.

Metadata filters (engine/index/filters.py) come from the stage (``filter:``,
every query) and from the query itself (``Query.filter``); both must hold.
The document store resolves a filter to the passages that pass, once per
distinct filter, and ``search`` is handed that ``Selection`` to search within.

A sharded index (engine/index/sharding.py) is searched by one copy of the
retriever per shard, and their lists merged (retrievers/shards.py); a
retriever opens its shards with ``open_shards`` when it warms up, and says
how its shards' lists merge (``merge_shard_lists``) and, where its scores
depend on the collection, which statistics they share (``shard_statistics``,
``merged_statistics``, ``use_statistics``).
"""

from __future__ import annotations

import abc
import contextlib
import gc
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from ragline.engine.errors import RaglineError
from ragline.engine.index.docstore import Selection
from ragline.engine.index.filters import Both, Node, compile_filter, parse_filters
from ragline.engine.index.sharding import is_sharded
from ragline.engine.stage import Stage
from ragline.engine.types import Hit, Query

log = logging.getLogger(__name__)

# Distinct filters whose selections a retriever keeps (a service's requests repeat a few).
_SELECTIONS_KEPT = 64


class Retriever(Stage):
    is_retriever = True
    #: The document store of the index searched; set by ``warm_up``.
    _store = None
    #: The stage's own filter, parsed (``None``: none); set by ``set_filter``.
    _filter_tree: Node | None = None
    # Selections by query filter, for the store they were computed on.
    _selections: dict[str | None, Selection] | None = None
    _selections_of = None
    #: The shards searched, when the index is sharded (``open_shards``).
    _shards = None

    def set_filter(self, filter: str | list[str] | None) -> None:
        """Parse the stage's filter now, so a malformed one fails at construction."""
        self._filter_tree = parse_filters(filter)

    @abc.abstractmethod
    def search(self, texts: list[str], k: int | None = None,
               allowed: Selection | None = None) -> list[list[tuple[str, float]]]:
        """One ``(passage id, score)`` list per text, best first; only passages
        in ``allowed`` when it is given."""

    def run(self, batch: list[Query]) -> list[Query]:
        self.warm_up()
        if self._shards is not None:
            with _cyclic_gc_paused():
                return self._run_on_shards(batch)
        # A batch of 1000-deep result lists is ~10^5 new objects (the search
        # library's result wrappers, then our hits): enough to set off full
        # cyclic-GC passes over every object of the process (torch and all),
        # measured at ~10% of a BM25 batch. Nothing here forms reference
        # cycles, so the collector can wait until the batch is done.
        with _cyclic_gc_paused():
            for queries, allowed in self._by_filter(batch):
                results = self.search([q.text for q in queries], allowed=allowed)
                for query, found in zip(queries, results):
                    hits = [Hit(pid, score, rank, self.name, self._store) for rank, (pid, score) in enumerate(found, 1)]
                    query.hits[self.name] = hits
                    query.ranking = hits
        return batch

    def _run_on_shards(self, batch: list[Query]) -> list[Query]:
        groups: dict[str | None, list[Query]] = {}
        for query in batch:
            groups.setdefault(query.filter, []).append(query)
        for query_filter, queries in groups.items():
            self.check_filter(query_filter)
            results, missing = self._shards.search([q.text for q in queries], self.k, query_filter)
            stores = self._shards.stores
            for query, found in zip(queries, results):
                hits = [Hit(pid, score, rank, self.name, stores[shard]) for rank, (pid, score, shard) in enumerate(found, 1)]
                query.hits[self.name] = hits
                query.ranking = hits
                if missing:
                    query.note(partial=True, missing_shards=missing)
        return batch

    # -- sharded indexes -------------------------------------------------

    def open_shards(self) -> bool:
        """In ``warm_up``, first: when the index is sharded, open its shards
        (on Ray where the retriever's ``ray`` setting says) and return True —
        the retriever then searches them and opens nothing else."""
        if not is_sharded(self.index):
            if getattr(self, "ray", None) is not None or getattr(self, "missing_shards", "flag") != "flag":
                log.warning("%s: index %s is not sharded; 'ray' and 'missing_shards' apply only to a sharded "
                            "index and are ignored", self.name, self.index)
            return False
        from ragline.retrievers.shards import ShardSet  # (imports no Ray)

        self._shards = ShardSet(self, ray=getattr(self, "ray", None),
                                missing_shards=getattr(self, "missing_shards", "flag"))
        return True

    def search_shards(self, texts: list[str], k: int | None, allowed) -> list[list[tuple[str, float]]]:
        """``search`` on a sharded index: the merged lists (a partial result is logged)."""
        if allowed is not None:
            raise RaglineError("a sharded index is searched within a metadata filter (the stage's or a query's), "
                               "not within a selection of passages")
        results, missing = self._shards.search(texts, k or self.k)
        if missing:
            log.warning("shards %s did not answer: the results are partial", missing)
        return [[(pid, score) for pid, score, _ in found] for found in results]

    def shard_settings(self, path: str) -> dict[str, Any]:
        """The settings of this retriever's copy that searches the shard at ``path``."""
        settings = {**self.to_config(with_defaults=True), "index": path}
        for per_search in ("k", "ray", "missing_shards"):  # given per search, or the shard set's own
            settings.pop(per_search, None)
        return settings

    def shard_statistics(self) -> Any:
        """What this (shard's) retriever's scores depend on besides the query and
        the passage, to be summed over the shards; None when nothing."""
        return None

    @classmethod
    def merged_statistics(cls, parts: Sequence[Any]) -> Any:
        """The whole collection's statistics from every shard's ``shard_statistics``."""
        return None

    def use_statistics(self, statistics: Any) -> None:
        """Score with the whole collection's ``statistics`` from now on."""
        raise NotImplementedError(f"{type(self).__name__} scores without collection statistics")

    @classmethod
    def merge_shard_lists(cls, lists: Sequence[Sequence[tuple[str, float, int]]], k: int) -> list[tuple[str, float, int]]:
        """The top ``k`` of the shards' ``(id, score, shard)`` lists, each best
        first; equal scores keep the order of the shards."""
        merged = sorted((hit for found in lists for hit in found), key=lambda hit: -hit[1])
        return merged[:k]

    def _by_filter(self, batch: list[Query]) -> Iterator[tuple[list[Query], Selection | None]]:
        """The batch in groups of queries with the same filter, each with the
        passages that filter lets through (``None``: no filter)."""
        groups: dict[str | None, list[Query]] = {}
        for query in batch:
            groups.setdefault(query.filter, []).append(query)
        for query_filter, queries in groups.items():
            yield queries, self.selection(query_filter)

    def selection(self, query_filter: str | None = None, fields: dict[str, set[str]] | None = None
                  ) -> Selection | None:
        """The passages that the stage's filter and ``query_filter`` both let
        through; ``fields``: the metadata fields to compile the filter against
        (a shard's copy is given the whole index's)."""
        tree = self._combined_filter(query_filter)
        if tree is None:
            return None
        self.warm_up()
        if self._shards is not None:
            raise RaglineError("a sharded index has no one selection of passages: each shard selects its own")
        if self._selections_of is not self._store:  # an updated index: selections start again
            self._selections, self._selections_of = {}, self._store
        if query_filter not in self._selections:
            if len(self._selections) >= _SELECTIONS_KEPT:
                self._selections.pop(next(iter(self._selections)))
            self._selections[query_filter] = self._store.select(tree, fields)
        return self._selections[query_filter]

    def check_filter(self, query_filter: str | None) -> None:
        """Raise ``FilterError`` if ``query_filter`` is malformed or does not fit
        the index's metadata (before a query carrying it joins a batch)."""
        tree = self._combined_filter(query_filter)
        if tree is not None:
            compile_filter(tree, self.metadata_fields())

    def metadata_fields(self) -> dict[str, set[str]]:
        """The metadata fields of the index searched, with the kinds of value each holds."""
        self.warm_up()
        if self._shards is not None:
            return self._shards.metadata_fields()
        return self._store.metadata_fields

    def _combined_filter(self, query_filter: str | None) -> Node | None:
        tree = self._filter_tree
        if query_filter is not None:
            query_tree = parse_filters(query_filter)
            tree = query_tree if tree is None else Both(tree, query_tree)
        return tree


@contextlib.contextmanager
def _cyclic_gc_paused():
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
