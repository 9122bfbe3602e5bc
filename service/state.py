"""The long-lived services of one app instance, built once by the factory."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import anyio
import anyio.to_thread
import orjson
from starlette.responses import Response

from engine.cache import CompileCache
from engine.compute import Engine, Limits, Offload, inline_limit
from engine.errors import EngineError, NotFound
from engine.interpreter import TypeCache
from engine.program import Program
from engine.registry import GraphRegistry, RegisteredGraph, SharedGraphs
from engine.sessions.runtime import SessionRuntime
from engine.sessions.state import Session
from engine.sessions.store import (
    InMemorySessionStore,
    SessionStore,
    StoreLimits,
    StoreUnavailable,
)
from engine.tensors import encode
from service.config import Settings
from service.errors import ApiError
from service.idempotency import idempotency, keep, record, replay
from service.metrics import Metrics
from service.middleware import api_key_owner

T = TypeVar("T")
log = logging.getLogger("gradtape")


@dataclass
class Services:
    settings: Settings
    engine: Engine
    registry: GraphRegistry
    metrics: Metrics
    sessions: SessionStore
    runtime: SessionRuntime
    shared_graphs: SharedGraphs | None = None
    _sweeper: asyncio.Task[None] | None = None
    _limiter: anyio.CapacityLimiter | None = None
    _computing: int = 0  # requests in a worker thread or waiting for one
    _trim: Callable[[int], int] | None = field(default=None, repr=False)

    @classmethod
    def build(cls, settings: Settings, clock: Callable[[], float] = time.time) -> Services:
        metrics = Metrics()
        if settings.compile_cache_dir:
            enable_persistent_compile_cache(settings.compile_cache_dir)
        cache = CompileCache(settings.compile_cache_size, settings.jit_after,
                             background=settings.compile_in_background,
                             on_compile=metrics.compile_time.observe,
                             max_compile_weight=settings.max_compile_weight)
        metrics.watch_cache(cache)
        limits = Limits(max_nodes=settings.max_nodes, max_elements=settings.max_elements,
                        max_args_per_node=settings.max_args_per_node,
                        max_edges=settings.max_edges,
                        max_request_bytes=settings.max_request_bytes,
                        max_request_flops=settings.max_request_flops,
                        max_response_bytes=settings.max_response_bytes,
                        max_iterations=settings.max_iterations)
        engine = Engine(limits, cache, TypeCache())
        registry = GraphRegistry(settings.max_graphs, limits, settings.graph_cache_bytes)
        store_limits = StoreLimits(
            default_ttl=settings.session_ttl_seconds, max_ttl=settings.session_max_ttl_seconds,
            max_sessions=settings.max_sessions, session_max_bytes=settings.session_max_bytes,
            total_max_bytes=settings.total_session_bytes)
        store: SessionStore
        shared: SharedGraphs | None = None
        if settings.store == "redis":
            from engine.sessions.store.redis import RedisGraphs, RedisSessionStore

            store = RedisSessionStore(settings.redis_url, store_limits, clock,
                                      lease_seconds=settings.session_lease_seconds,
                                      cache_bytes=settings.tensor_cache_bytes)
            shared = RedisGraphs(store, settings.max_graphs, settings.graph_cache_bytes)
        else:
            store = InMemorySessionStore(store_limits, clock=clock)
        metrics.sessions.set_function(store.count)
        return cls(settings, engine, registry, metrics, store,
                   SessionRuntime(engine, store.check_bytes), shared)

    async def start(self) -> None:
        self._limiter = anyio.CapacityLimiter(self.settings.max_concurrent_compute)
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.sessions.close()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_seconds)
            with contextlib.suppress(StoreUnavailable):
                if await self.sessions.sweep():
                    release_free_memory()

    async def once(self, make: Callable[[], Awaitable[Response]]) -> Response:
        """`make()`'s answer; with an Idempotency-Key, the answer the key got before, if it
        did (kept in the store for a day: creating or deleting a session)."""
        request = idempotency.get()
        if request is None:
            return await make()
        key = f"{api_key_owner.get() or '-'}:{request.key}"
        found = await self.sessions.recall(key)
        if found is not None:
            return replay(request, found)
        response = await make()
        await self.sessions.remember(key, record(request, response))
        return response

    async def create_session(self, ttl_seconds: float | None) -> Session:
        return await self.sessions.create(ttl_seconds, api_key_owner.get())

    async def delete_session(self, session_id: str) -> None:
        await self.sessions.delete(session_id, api_key_owner.get())
        release_free_memory()

    async def in_session(self, session_id: str, work: Callable[[Session], T], *,
                         body_bytes: int = 0, compute: bool = False,
                         readonly: bool = False) -> T:
        """Run `work` on the session, one writing request at a time per session (across
        replicas with a shared store); a request that fails or is cancelled halfway leaves
        the session as it was. `compute` work (decoding tensors, running ops, derivatives,
        describing a big session) goes through `run`, which keeps only cheap work on the
        event loop. While the session's last update or run is still computed (`Values`),
        reading its results waits for it: when that is more work than the event loop takes
        on, the request goes to a worker thread. Work that is not `compute` reads no
        tensor's value."""
        request = None if readonly else idempotency.get()
        async with self.sessions.open(session_id, api_key_owner.get(),
                                      write=not readonly) as session:
            if request is not None and request.key in session.applied:
                return cast(T, replay(request, session.applied[request.key]))
            if not compute:
                result = work(session)
            elif not session.values.ready() and \
                    session.values.under_way > self._inline_flops(self.metrics.in_flight <= 1):
                # a computation answered before it ended is still under way, and more work
                # than the event loop may take on: the request may wait for it, which it
                # does in a worker thread
                result = await self.offload(lambda: work(session))
            else:
                result = await self.run(lambda: work(session), body_bytes=body_bytes)
            if request is not None and isinstance(result, Response):
                keep(session.applied, request, result)  # committed with the change
            return result

    def parse(self, graph: Any) -> Program:
        """The Program of an inline graph."""
        try:
            return self.registry.parse_inline(graph.plain())
        except EngineError as exc:
            raise exc.with_loc("graph") from None

    async def register_graph(self, graph: dict[str, Any], body_bytes: int
                             ) -> tuple[RegisteredGraph, bool]:
        entry, new = await self.run(lambda: self.registry.register(graph),
                                    body_bytes=body_bytes)
        if self.shared_graphs is not None:
            new = await self.shared_graphs.put(entry)
        return entry, new

    async def graph(self, graph_id: str, loc: tuple[str, ...] = ("graph_id",)
                    ) -> RegisteredGraph:
        """A registered graph: from this replica's registry, or else from the shared store
        (then parsed once here)."""
        try:
            try:
                return self.registry.get(graph_id)
            except NotFound:
                if self.shared_graphs is None:
                    raise
                blob = await self.shared_graphs.get(graph_id)
                if blob is None:
                    raise
            graph = orjson.loads(blob)
            entry, _ = await self.run(lambda: self.registry.register(graph),
                                      body_bytes=len(blob))
            return entry
        except EngineError as exc:
            raise exc.with_loc(*loc) from None

    async def run(self, work: Callable[[], T], *, body_bytes: int) -> T:
        """Run `work` on the event loop when it is cheap (a small request whose query is
        already compiled and whose estimated work is small): a thread hop would cost more
        than the work. Anything else (decoding a big body, tracing, compiling, heavy
        queries) runs in a worker thread so that it cannot stall other requests; the engine
        says which by raising `Offload` before it has changed anything but what running
        `work` again does the same way (binding a request's inputs). When this request
        is the only one the process is answering, there is no other request to stall: work
        up to the larger idle limits runs on the event loop too (a training loop's client
        waits for each answer before it sends the next request)."""
        settings = self.settings
        idle = self.metrics.in_flight <= 1
        max_body = settings.inline_idle_max_body_bytes if idle else \
            settings.inline_max_body_bytes
        if body_bytes <= max_body:
            token = inline_limit.set(self._inline_flops(idle))
            try:
                return work()
            except Offload:
                pass
            finally:
                inline_limit.reset(token)
        return await self.offload(work)

    def _inline_flops(self, idle: bool) -> int:
        """The most estimated work the event loop takes on (`run`)."""
        return self.settings.inline_idle_max_flops if idle else self.settings.inline_max_flops

    async def offload(self, work: Callable[[], T]) -> T:
        """Run `work` in a worker thread, at most `max_concurrent_compute` at once, with at
        most `compute_queue` more waiting; past that, 503 with Retry-After (backpressure
        instead of an ever longer queue)."""
        settings = self.settings
        if self._computing >= settings.max_concurrent_compute + settings.compute_queue:
            raise ApiError(503, f"the server is busy: {self._computing} requests are "
                           "computing or waiting for a worker (GRADTAPE_MAX_CONCURRENT_COMPUTE "
                           f"{settings.max_concurrent_compute}, GRADTAPE_COMPUTE_QUEUE "
                           f"{settings.compute_queue}); retry after Retry-After seconds",
                           headers={"Retry-After": "1"})
        if self._limiter is None:  # used before the lifespan started (a bare create_app)
            self._limiter = anyio.CapacityLimiter(settings.max_concurrent_compute)
        self._computing += 1
        try:
            return await anyio.to_thread.run_sync(work, limiter=self._limiter)
        finally:
            self._computing -= 1


def encode_tree(value: Any, encoding: str) -> Any:
    """Encode every array in a nest of dicts as a response tensor; None stays null, and a
    plain Python number (a count, such as an optimizer's step) stays a number."""
    if value is None or type(value) in (int, float, bool):
        return value
    if isinstance(value, dict):
        return {k: encode_tree(v, encoding) for k, v in value.items()}
    return encode(value, encoding=encoding)


def enable_persistent_compile_cache(path: str) -> None:
    """Keep compiled code on disk in `path` (JAX's persistent compilation cache), so that a
    restart does not compile again what it compiled before."""
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


_libc: Any = None


def release_free_memory() -> None:
    """Hand memory freed by deleted sessions back to the operating system (glibc keeps
    freed small blocks in its arenas otherwise, and the process's RSS stays high)."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6")
        except OSError:
            _libc = False
    if _libc:
        _libc.malloc_trim(0)
