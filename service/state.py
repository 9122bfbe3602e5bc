"""The long-lived services of one app instance, built once by the factory."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from engine.cache import CompileCache
from engine.compute import Engine, Limits, Offload, inline_limit
from engine.errors import EngineError
from engine.interpreter import TypeCache
from engine.program import Program
from engine.registry import GraphRegistry
from engine.sessions.runtime import SessionRuntime
from engine.sessions.state import Session
from engine.sessions.store import InMemorySessionStore, SessionStore, StoreLimits
from engine.tensors import encode
from service.config import Settings
from service.metrics import Metrics

T = TypeVar("T")


@dataclass
class Services:
    settings: Settings
    engine: Engine
    registry: GraphRegistry
    metrics: Metrics
    sessions: SessionStore
    runtime: SessionRuntime
    _sweeper: asyncio.Task[None] | None = None

    @classmethod
    def build(cls, settings: Settings, clock: Callable[[], float] = time.time) -> Services:
        metrics = Metrics()
        cache = CompileCache(settings.compile_cache_size, settings.jit_after,
                             background=settings.compile_in_background,
                             on_compile=metrics.compile_time.observe)
        metrics.watch_cache(cache)
        limits = Limits(max_nodes=settings.max_nodes, max_elements=settings.max_elements)
        engine = Engine(limits, cache, TypeCache())
        registry = GraphRegistry(settings.max_graphs, settings.max_nodes, settings.max_elements)
        store = InMemorySessionStore(StoreLimits(
            default_ttl=settings.session_ttl_seconds, max_ttl=settings.session_max_ttl_seconds,
            max_sessions=settings.max_sessions, session_max_bytes=settings.session_max_bytes,
            total_max_bytes=settings.total_session_bytes), clock=clock)
        metrics.sessions.set_function(lambda: len(store))
        return cls(settings, engine, registry, metrics, store,
                   SessionRuntime(engine, store.check_bytes))

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_seconds)
            self.sessions.sweep()

    async def in_session(self, session_id: str, work: Callable[[Session], T], *,
                         body_bytes: int = 0, compute: bool = False) -> T:
        """Run `work` on the session while holding its lock: one request at a time per
        session. `compute` work (decoding tensors, running ops, derivatives) goes through
        `run`, which keeps only cheap work on the event loop."""
        async with self.sessions.lock(session_id):
            session = self.sessions.get(session_id)
            if not compute:
                return work(session)
            return await self.run(lambda: work(session), body_bytes=body_bytes)

    def program(self, graph: Any, graph_id: str | None) -> Program:
        """The Program of an inline graph or a registered one."""
        if graph_id is not None:
            try:
                return self.registry.get(graph_id).program
            except EngineError as exc:
                raise exc.with_loc("graph_id") from None
        try:
            return self.registry.parse(graph.plain())
        except EngineError as exc:
            raise exc.with_loc("graph") from None

    async def run(self, work: Callable[[], T], *, body_bytes: int) -> T:
        """Run `work` on the event loop when it is cheap (a small request whose query is
        already compiled, on small tensors): a thread hop would cost more than the work.
        Anything else (decoding a big body, tracing, compiling, large inputs) runs in a
        worker thread so that it cannot stall other requests; the engine says which by
        raising `Offload` before it has changed anything."""
        if body_bytes <= self.settings.inline_max_body_bytes:
            token = inline_limit.set(self.settings.inline_max_elements)
            try:
                return work()
            except Offload:
                pass
            finally:
                inline_limit.reset(token)
        return await run_in_threadpool(work)


def encode_tree(value: Any, encoding: str) -> Any:
    """Encode every array in a nest of dicts as a response tensor; None stays null."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: encode_tree(v, encoding) for k, v in value.items()}
    return encode(value, encoding=encoding)
