"""All settings, read from GRADTAPE_* environment variables (or a .env file)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.cost import machine_memory


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRADTAPE_", env_file=".env", extra="ignore",
                                      env_ignore_empty=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines as text (time, level, logger, message, key=value "
        "fields) or json (one object a line)")
    access_log: bool = Field(True, description="one line per request (logger gradtape.access)")
    opentelemetry: bool = Field(
        False, description="FastAPI's OpenTelemetry spans, metrics and logs, for a process "
        "that configures an OpenTelemetry SDK; off, no request pays for checking whether one "
        "is configured (the Prometheus metrics at /metrics are always on)")

    # HTTP server (uvicorn)
    http_parser: Literal["auto", "h11", "httptools"] = Field(
        "auto", description="uvicorn's HTTP parser; auto is httptools when installed")
    keep_alive_seconds: int = Field(5, ge=1, description="idle keep-alive connections close "
                                    "after this")
    max_incomplete_event_bytes: int = Field(
        64 * 1024, ge=1024, description="h11 parser only: bytes buffered for an incomplete "
        "request line and headers")
    shutdown_timeout_seconds: int = Field(
        8, ge=0, description="on SIGTERM, in-flight requests get this long before the process "
        "exits anyway")

    # request and graph limits
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="413 above this")
    max_nodes: int = Field(10_000, ge=1, description="nodes per graph or per run request")
    max_elements: int = Field(50_000_000, ge=1, description="elements per tensor")
    max_args_per_node: int = Field(1_000, ge=1, description="arguments of one node")
    max_edges: int = Field(100_000, ge=1, description="arguments of all nodes of a graph or "
                           "run request together")
    max_request_bytes: int = Field(
        default_factory=lambda: machine_memory() // 4, ge=1024 * 1024,
        description="413 when a query's estimated peak memory is over this (default: a "
        "quarter of the machine's or container's memory)")
    max_request_flops: float = Field(1e12, gt=0, description="413 when a query's estimated "
                                     "work is over this many floating-point operations")
    max_response_bytes: int = Field(256 * 1024**2, ge=1024, description="413 when the "
                                    "tensors of an answer would hold more raw bytes")
    max_iterations: int = Field(
        10_000, ge=1, description="the most iterations of a while_loop without "
        "max_iterations (forward mode only); one that reaches it is a 422")
    max_graphs: int = Field(10_000, ge=1, description="registered graphs kept (LRU)")
    graph_cache_bytes: int = Field(512 * 1024**2, ge=1024, description="bytes of registered "
                                   "graphs kept (LRU, with max_graphs)")

    # compile cache
    compile_cache_size: int = Field(512, ge=1)
    jit_after: int = Field(1, ge=0, description="calls run eagerly before a key is compiled")
    compile_in_background: bool = Field(
        True, description="compile in a background thread while calls go on eagerly")
    inline_max_body_bytes: int = Field(
        16384, ge=0, description="requests up to this size whose query is already compiled "
        "run on the event loop; bigger or uncompiled ones run in a worker thread")
    inline_max_flops: int = Field(
        1_000_000, ge=0, description="...and whose estimated work is at most this many "
        "floating-point operations")
    inline_idle_max_body_bytes: int = Field(
        4 * 1024**2, ge=0, description="the body limit for the event loop when the request is "
        "the only one being answered (no other request can be held up)")
    inline_idle_max_flops: int = Field(
        2_000_000_000, ge=0, description="the work limit for the event loop when the "
        "request is the only one being answered (about 10 ms on a current CPU, 100 ms on a "
        "slow core: a request that comes in meanwhile waits at most that long)")
    max_compile_weight: float = Field(
        1200, gt=0, description="queries heavier than this (equations times a factor per "
        "kind: evaluate 0.7, jvp 0.9, gradient and jacobian 1, hvp 3.5, minimize 4, hessian "
        "5) are not compiled: they run eagerly (a minimize loop is refused); 1200 is "
        "about 5 s of XLA compile on one idle core "
        "(see benchmarks/compile_budget.py)")
    compile_cache_dir: str | None = Field(
        None, description="JAX's persistent compilation cache: compiled code kept on disk "
        "here survives restarts (off when unset)")
    max_concurrent_compute: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1,
        description="requests computing in worker threads at once (default: the cores)")
    compute_queue: int = Field(
        64, ge=0, description="requests waiting for a compute slot; past it, 503 with "
        "Retry-After")

    # sessions
    session_ttl_seconds: float = Field(900, gt=0, description="idle time before expiry")
    session_max_ttl_seconds: float = Field(86_400, gt=0)
    max_sessions: int = Field(1000, ge=1)
    session_max_bytes: int = Field(1024**3, ge=1024, description="tensor bytes per session")
    total_session_bytes: int = Field(8 * 1024**3, ge=1024, description="all sessions together")
    sweep_interval_seconds: float = Field(30, gt=0)
    store: Literal["memory", "redis"] = Field(
        "memory", description="where sessions and registered graphs live: this process's "
        "memory, or Redis (shared by every replica)")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="the Redis store's server")
    tensor_cache_bytes: int = Field(256 * 1024**2, ge=0, description="Redis store: session "
                                    "tensors kept in this replica's memory (LRU)")
    session_lease_seconds: float = Field(30, gt=0, description="Redis store: a writing "
                                         "request's lease on its session, extended while it "
                                         "runs")

    api_keys: str = Field("", description="comma-separated keys; when set, /v1 routes other "
                          "than health need X-API-Key or Authorization: Bearer")

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())
