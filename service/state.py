"""The long-lived services of one app instance, built once by the factory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from starlette.concurrency import run_in_threadpool

from engine.cache import CompileCache
from engine.compute import Bound, Engine, Limits
from engine.errors import EngineError
from engine.interpreter import TypeCache
from engine.program import Program
from engine.registry import GraphRegistry
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

    @classmethod
    def build(cls, settings: Settings) -> Services:
        metrics = Metrics()
        cache = CompileCache(settings.compile_cache_size, settings.jit_after,
                             on_compile=metrics.compile_time.observe)
        metrics.watch_cache(cache)
        limits = Limits(max_nodes=settings.max_nodes, max_elements=settings.max_elements)
        engine = Engine(limits, cache, TypeCache())
        registry = GraphRegistry(settings.max_graphs, settings.max_nodes, settings.max_elements)
        return cls(settings, engine, registry, metrics)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def program(self, graph: Any, graph_id: str | None) -> Program:
        """The Program of an inline graph or a registered one."""
        if graph_id is not None:
            return self.registry.get(graph_id).program
        try:
            return self.registry.parse(graph.plain())
        except EngineError as exc:
            raise exc.with_loc("graph") from None

    def bind(self, program: Program, inputs: dict[str, Any]) -> Bound:
        return self.engine.bind(program, inputs)

    async def run(self, work: Callable[[], T], *, hot: bool, body_bytes: int) -> T:
        """Run `work` on the event loop when it is known to be cheap (a compiled query on a
        small request), else in a worker thread so that it cannot stall other requests."""
        if hot and body_bytes <= self.settings.inline_max_body_bytes:
            return work()
        return await run_in_threadpool(work)


def encode_tree(value: Any, base64: bool) -> Any:
    """Encode every array in a nest of dicts as a response tensor; None stays null."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: encode_tree(v, base64) for k, v in value.items()}
    if isinstance(value, np.ndarray | np.generic):
        return encode(value, base64_encoding=base64)
    return encode(np.asarray(value), base64_encoding=base64)
