"""Searching a sharded index (engine/index/sharding.py): every batch goes to
every shard, and the shards' lists are merged into the whole index's top k.

The merge is exact: a passage in the whole index's top k is in its own
shard's top k, so the top k of the shards' top k lists is the whole top k —
provided each shard scores as the whole index would. Dense scores depend on
the passage and the query alone. BM25's depend on the collection (document
count, document frequencies, average length): every shard therefore scores
with the statistics summed over all shards (``Retriever.merged_statistics``),
gathered once when the shards open, the way Elasticsearch's DFS search does;
FAISS's own ``IndexShards`` merges the same way for dense. Ties between
shards are broken as the retriever says (``Retriever.merge_shard_lists``;
BM25: by id, as Anserini does).

Each shard is searched by a copy of the retriever over the shard's folder
(``Retriever.shard_settings``): here, one after the other, or on Ray, one
actor per shard (``ray``), spread one per node where there are several, and
shared by every retriever of the index (a hybrid pipeline's BM25 and dense). A shard
actor that dies is restarted by Ray and its unfinished searches run again
(``FAULT_TOLERANCE``); it takes the statistics up again on its first search
after a restart, since every search names the statistics it must score with.
A shard that does not answer (it stays down, or exceeds ``timeout``) leaves
the batch ``partial``: the hits of the other shards, and the missing shards'
numbers in each query's trace — or, with ``missing_shards="fail"``, an error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
from collections.abc import Callable
from typing import Any, Literal

from ragline.engine.errors import InputError, RaglineError
from ragline.engine.index.docstore import DocStore
from ragline.engine.index.filters import FilterError
from ragline.engine.index.sharding import ShardedIndex

log = logging.getLogger(__name__)

MissingShards = Literal["flag", "fail"]
# Seconds a shard may take for one batch before it counts as missing.
SHARD_TIMEOUT_S = 120.0
# Seconds the shard actors may take to start and open their shards (models load): generous.
OPEN_TIMEOUT_S = 900.0


class ShardUnavailable(RaglineError):
    """A shard did not answer and the search was asked to fail rather than be partial."""


class ShardSearcher:
    """One shard's copy of a retriever, searched for the shard set; the same
    class runs in this process and as a Ray actor."""

    def __init__(self, retriever_class: type, settings: dict[str, Any]):
        self.retriever = retriever_class(**settings)
        self._statistics: Any = None

    def warm(self) -> bool:
        self.retriever.warm_up()
        return True

    def statistics(self) -> Any:
        self.retriever.warm_up()
        return self.retriever.shard_statistics()

    def use_statistics(self, statistics: Any) -> None:
        self.retriever.warm_up()
        self.retriever.use_statistics(statistics)
        self._statistics = statistics

    def search(self, texts: list[str], k: int, query_filter: str | None, statistics: Any = None,
               fields: dict[str, set[str]] | None = None) -> list[list[tuple[str, float]]]:
        """The shard's top ``k`` for each text, scored with ``statistics`` where
        given; ``query_filter`` compiled against the whole index's ``fields``."""
        self.retriever.warm_up()
        if statistics is not None and statistics is not self._statistics:
            self.use_statistics(statistics)
        allowed = self.retriever.selection(query_filter, fields)
        return self.retriever.search(texts, k, allowed=allowed)


class ShardActor:
    """One shard's Ray actor. It searches the shard for every retriever of the
    index (BM25 and dense: one actor per shard, not one per retriever), each
    by a ``ShardSearcher`` made on first use from the class and settings that
    every call carries — so a restarted actor makes them again. The statistics
    come as a reference to Ray's object store (in a list, so that Ray hands the
    reference itself), fetched when it is not the one in use."""

    def __init__(self, number: int):
        self.number = number
        self._searchers: dict[str, ShardSearcher] = {}
        self._references: dict[str, Any] = {}

    def node(self) -> str:
        """The Ray node this shard is searched on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def statistics(self, kind: type, settings: dict[str, Any]) -> Any:
        return self._searcher(kind, settings)[1].statistics()

    def search(self, kind, settings, texts, k, query_filter, statistics=None, fields=None):
        key, searcher = self._searcher(kind, settings)
        if statistics is not None and self._references.get(key) != statistics[0]:
            import ray

            searcher.use_statistics(ray.get(statistics[0]))
            self._references[key] = statistics[0]
        return searcher.search(texts, k, query_filter, fields=fields)

    def _searcher(self, kind: type, settings: dict[str, Any]) -> tuple[str, ShardSearcher]:
        key = json.dumps([kind.__module__, kind.__qualname__, settings], sort_keys=True, default=str)
        if key not in self._searchers:
            self._searchers[key] = ShardSearcher(kind, settings)
        return key, self._searchers[key]


class _SharedActors:
    """The shard actors of each sharded index in this process, shared by its
    retrievers and killed when the last of them closes; and the Ray session
    they opened, if they opened one, closed with the last actors."""

    def __init__(self):
        self._lock = threading.Lock()
        self._actors: dict[tuple[str, str], tuple[list, int]] = {}
        self._session: contextlib.ExitStack | None = None
        self._users = 0

    def take(self, address: str, folders: tuple[str, ...]) -> tuple[Any, list]:
        """The actors of the shards in ``folders`` (absolute paths), made if none are alive."""
        from ragline.engine.scale.ray_session import FAULT_TOLERANCE, JVM_SAFE, ray_session

        with self._lock:
            if self._users == 0:
                session = contextlib.ExitStack()
                session.enter_context(ray_session(address))
                self._session = session
            self._users += 1
            try:
                import ray

                key = (folders, ray.get_runtime_context().get_job_id())
                actors, users = self._actors.get(key, (None, 0))
                if actors is None:
                    # One CPU slot each (a share of one where the cluster has fewer
                    # slots than shards: every shard must be placed), one per node
                    # while nodes are free (SPREAD).
                    slots = ray.cluster_resources().get("CPU", 1.0)
                    cpus = 1.0 if slots >= len(folders) else math.floor(100 * slots / len(folders)) / 100
                    remote = ray.remote(num_cpus=cpus, scheduling_strategy="SPREAD", runtime_env={"env_vars": JVM_SAFE},
                                        **FAULT_TOLERANCE)(ShardActor)
                    actors = [remote.remote(number) for number in range(len(folders))]
                self._actors[key] = (actors, users + 1)
                return ray, actors
            except BaseException:
                self._release_session()
                raise

    def give_back(self, ray, actors: list) -> None:
        with self._lock:
            for key, (held, users) in list(self._actors.items()):
                if held is actors:
                    if users > 1:
                        self._actors[key] = (held, users - 1)
                    else:
                        del self._actors[key]
                        for actor in held:
                            ray.kill(actor, no_restart=True)
            self._release_session()

    def _release_session(self) -> None:
        self._users -= 1
        if self._users == 0 and self._session is not None:
            self._session.close()
            self._session = None


_shared = _SharedActors()


class ShardSet:
    """The shards of the index ``retriever`` reads, each searched by a copy of
    it; ``search`` scatters a batch and merges the lists."""

    def __init__(self, retriever, ray: str | None = None, missing_shards: MissingShards = "flag",
                 timeout: float = SHARD_TIMEOUT_S):
        self.kind = type(retriever)
        self.index = ShardedIndex.open(retriever.index)
        self.missing_shards = missing_shards
        self.timeout = timeout
        # The driver reads passages from the shards' stores (a shared file system on a cluster).
        self.stores: list[DocStore] = [shard.docstore() for shard in self.index.shards]
        # Filters are compiled against the whole index's fields (a field some shards lack matches nothing there).
        self.fields = self.metadata_fields()
        settings = [retriever.shard_settings(str(shard.path)) for shard in self.index.shards]
        self._exit = contextlib.ExitStack()
        self.actors: list = []  # on Ray: the shards' actors, in shard order
        try:
            if ray is None:
                self._scatter = self._local(settings)
            else:
                self._scatter = self._on_ray(ray, settings)
        except BaseException:
            self._exit.close()
            raise

    @property
    def count(self) -> int:
        return self.index.count

    def search(self, texts: list[str], k: int, query_filter: str | None = None
               ) -> tuple[list[list[tuple[str, float, int]]], list[int]]:
        """``(id, score, shard)`` lists, one per text, best first, and the numbers
        of the shards that did not answer."""
        answers, missing = self._scatter(texts, k, query_filter)
        if missing and self.missing_shards == "fail":
            raise ShardUnavailable(f"shard{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of "
                                   f"{self.count} of index {self.index.root.path} did not answer")
        merged = []
        for position in range(len(texts)):
            lists = [[(pid, score, shard) for pid, score in answer[position]] for shard, answer in answers.items()]
            merged.append(self.kind.merge_shard_lists(lists, k))
        return merged, missing

    def metadata_fields(self) -> dict[str, set[str]]:
        fields: dict[str, set[str]] = {}
        for store in self.stores:
            for name, kinds in store.metadata_fields.items():
                fields.setdefault(name, set()).update(kinds)
        return fields

    def close(self) -> None:
        self._exit.close()

    def _local(self, settings: list[dict[str, Any]]) -> Callable:
        shards = [ShardSearcher(self.kind, s) for s in settings]
        statistics = self.kind.merged_statistics([shard.statistics() for shard in shards])

        def scatter(texts, k, query_filter):
            return {n: shard.search(texts, k, query_filter, statistics, self.fields) for n, shard in enumerate(shards)}, []

        return scatter

    def _on_ray(self, address: str, settings: list[dict[str, Any]]) -> Callable:
        from ragline.engine.scale.ray_session import user_error

        ray, actors = _shared.take(address, tuple(str(shard.path.resolve()) for shard in self.index.shards))
        self.actors = actors
        self._exit.callback(_shared.give_back, ray, actors)
        kind = self.kind
        try:
            parts = ray.get([actor.statistics.remote(kind, s) for actor, s in zip(actors, settings)],
                            timeout=OPEN_TIMEOUT_S)
        except Exception as error:
            raise (user_error(error) or RaglineError(f"the shards of {self.index.root.path} did not open on Ray: "
                                                     f"{str(error).strip().splitlines()[0]}")) from None
        merged = kind.merged_statistics(parts)
        statistics = None if merged is None else [ray.put(merged)]

        fields = self.fields

        def scatter(texts, k, query_filter):
            calls = {n: actor.search.remote(kind, settings[n], texts, k, query_filter, statistics, fields)
                     for n, actor in enumerate(actors)}
            ready, _ = ray.wait(list(calls.values()), num_returns=len(calls), timeout=self.timeout)
            answers, missing = {}, []
            for number, call in calls.items():
                if call not in ready:
                    log.warning("shard %d of %s did not answer within %.0f s", number, self.index.root.path, self.timeout)
                    with contextlib.suppress(Exception):  # (a task of a dead actor cannot be cancelled)
                        ray.cancel(call)
                    missing.append(number)
                    continue
                try:
                    answers[number] = ray.get(call)
                except Exception as error:
                    readable = user_error(error)
                    if isinstance(readable, (FilterError, InputError)):
                        raise readable from None  # a bad filter, say: the request's error, not a missing shard
                    log.warning("shard %d of %s failed: %s", number, self.index.root.path,
                                str(error).strip().splitlines()[0])
                    missing.append(number)
            return answers, missing

        return scatter
