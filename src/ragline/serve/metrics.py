"""Prometheus metrics, in a registry of the app's own (not the process-wide
default one), so several apps in one process (tests) never mix counts.

Counted as they happen: requests by route and status, latency, requests
in flight, batch sizes and times, generations stopped early. Read when
scraped: each pipeline's queue depth and each passage KV store's hits,
misses and bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("ragline_requests", "HTTP requests answered, by route and status.",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("ragline_request_seconds", "Seconds from a request's arrival to its last byte.",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("ragline_requests_in_flight", "HTTP requests being answered.", registry=self.registry)
        self.batch_size = Histogram("ragline_batch_size", "Requests per pipeline batch.", ["pipeline", "operation"],
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("ragline_batch_seconds", "Seconds a pipeline batch took on its worker.",
                                       ["pipeline", "operation"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.cancelled = Counter("ragline_generations_cancelled",
                                 "Generations stopped before their end because the client went away.",
                                 ["pipeline"], registry=self.registry)

    def observe_batch(self, pipeline: str, operation: str, size: int, seconds: float) -> None:
        self.batch_size.labels(pipeline, operation).observe(size)
        self.batch_seconds.labels(pipeline, operation).observe(seconds)

    def count_cancelled(self, pipeline: str) -> None:
        self.cancelled.labels(pipeline).inc()

    def watch(self, queue_depths: Callable[[], dict[str, int]], kv_stores: Callable[[], dict[str, object]]) -> None:
        """Read queue depths (by pipeline) and KV stores (by model) at each scrape."""
        self.registry.register(_LiveState(queue_depths, kv_stores))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveState:
    def __init__(self, queue_depths, kv_stores):
        self.queue_depths = queue_depths
        self.kv_stores = kv_stores

    def describe(self) -> Iterable[Metric]:
        return []  # values exist only once pipelines are served; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily("ragline_queue_depth", "Requests waiting for a batch, by pipeline.",
                                  labels=["pipeline"])
        for pipeline, waiting in self.queue_depths().items():
            depth.add_metric([pipeline], waiting)
        yield depth
        hits = CounterMetricFamily("ragline_kv_cache_hits", "Passage KV blocks found in the cache, by tier.",
                                   labels=["model", "tier"])
        misses = CounterMetricFamily("ragline_kv_cache_misses", "Passage KV blocks prefilled because absent.",
                                     labels=["model"])
        evictions = CounterMetricFamily("ragline_kv_cache_evictions", "Passage KV blocks evicted from memory.",
                                        labels=["model"])
        held = GaugeMetricFamily("ragline_kv_cache_bytes", "Bytes of passage KV held in memory.", labels=["model"])
        for model, store in self.kv_stores().items():
            stats = dict(store.stats)
            hits.add_metric([model, "memory"], stats["memory_hits"])
            hits.add_metric([model, "disk"], stats["disk_hits"])
            misses.add_metric([model], stats["misses"])
            evictions.add_metric([model], stats["evictions"])
            held.add_metric([model], store.bytes_held)
        yield from (hits, misses, evictions, held)
