"""Prometheus metrics: requests by route template and status, latency, and the compile cache."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.cache import CompileCache


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("gradtape_http_requests", "HTTP requests",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "gradtape_http_request_seconds", "HTTP request latency", ["method", "route"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                     5, 10, 30),
            registry=self.registry)
        self.compile_time = Histogram(
            "gradtape_compile_seconds", "XLA compile time of one query",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry)
        self.sessions = Gauge("gradtape_sessions", "Live sessions", registry=self.registry)
        self.in_flight = 0  # requests this process has taken and not yet answered
        Gauge("gradtape_http_requests_in_flight", "HTTP requests being answered",
              registry=self.registry).set_function(lambda: self.in_flight)

        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request and its latency. The labelled children are looked up once per
        (method, route template, status), a finite set, instead of on every request."""
        key = (method, route, str(status))
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(*key), self.latency.labels(method, route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def watch_cache(self, cache: CompileCache) -> None:
        self.registry.register(_CacheCollector(cache))  # type: ignore[arg-type]


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


class MetricsMiddleware:
    """Pure ASGI (no per-request task or body copy, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight += 1
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight -= 1
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope.get("method", ""), template, status,
                                 time.perf_counter() - start)
