"""Prometheus metrics: requests by route template and status, latency, and the compile cache
(counted by the gateway, service/middleware.py)."""

from __future__ import annotations

import bisect
import itertools
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from engine.cache import CompileCache

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                   10, 30)
_BOUNDS = [*(floatToGoString(b) for b in LATENCY_BUCKETS), "+Inf"]  # the `le` labels


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests: dict[tuple[str, str, str], int] = {}
        self._latency: dict[tuple[str, str], list[float]] = {}  # bucket counts, then the sum
        # (method, route, status) -> its key in _requests and its route's _latency counts
        self._observed: dict[tuple[str, str, int], Any] = {}
        self.registry.register(_RequestCollector(self))  # type: ignore[arg-type]
        self.compile_time = Histogram(
            "gradtape_compile_seconds", "XLA compile time of one query",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry)
        self.sessions = Gauge("gradtape_sessions", "Live sessions", registry=self.registry)
        self.in_flight = 0  # requests this process has taken and not yet answered
        Gauge("gradtape_http_requests_in_flight", "HTTP requests being answered",
              registry=self.registry).set_function(lambda: self.in_flight)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request and its latency (by method, route template and status, a finite
        set). Plain counts, read when /metrics is scraped: prometheus_client's own counter
        and histogram take locks and walk their buckets on every request, which is a
        measurable share of a request that takes a hundred microseconds. Called on the event
        loop only."""
        found = self._observed.get((method, route, status))
        if found is None:
            key = (method, route, str(status))
            self._requests.setdefault(key, 0)
            counts = self._latency.setdefault(key[:2], [0.0] * (len(LATENCY_BUCKETS) + 2))
            found = self._observed[method, route, status] = (key, counts)
        key, counts = found
        self._requests[key] += 1
        counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        counts[-1] += seconds

    def watch_cache(self, cache: CompileCache) -> None:
        self.registry.register(_CacheCollector(cache))  # type: ignore[arg-type]


class _RequestCollector:
    """The request counts and latency histogram of `Metrics.observe`, as Prometheus's
    counter `gradtape_http_requests_total` and histogram `gradtape_http_request_seconds`."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self) -> Any:
        requests = CounterMetricFamily("gradtape_http_requests", "HTTP requests",
                                       labels=["method", "route", "status"])
        for key, n in list(self.metrics._requests.items()):
            requests.add_metric(key, n)
        yield requests
        latency = HistogramMetricFamily("gradtape_http_request_seconds", "HTTP request latency",
                                        labels=["method", "route"])
        for route, counts in list(self.metrics._latency.items()):
            cumulative = list(itertools.accumulate(counts[:-1]))
            latency.add_metric(route, list(zip(_BOUNDS, cumulative, strict=True)),
                               sum_value=counts[-1])
        yield latency


class _CacheCollector:
    """Reads the cache's counters at scrape time."""

    def __init__(self, cache: CompileCache):
        self.cache = cache

    def collect(self) -> Any:
        stats = self.cache.stats
        for name, doc in (("hits", "Compile-cache hits"), ("misses", "Compile-cache misses"),
                          ("compiles", "XLA compilations"),
                          ("eager_runs", "Queries run eagerly (first sight of a key)"),
                          ("evictions", "Compile-cache evictions")):
            yield CounterMetricFamily(f"gradtape_compile_cache_{name}", doc,
                                      value=getattr(stats, name))
        yield CounterMetricFamily("gradtape_compile_cache_compile_seconds",
                                  "Total XLA compile time", value=stats.compile_seconds)
        yield GaugeMetricFamily("gradtape_compile_cache_entries", "Compile-cache entries",
                                value=len(self.cache))
