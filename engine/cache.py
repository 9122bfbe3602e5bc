"""The compile cache: pure functions compiled once per (structure, query, argument types).

Policy (see benchmarks/cold_start.py for the measurements behind it): the first `jit_after`
calls of a key run eagerly, op by op, which costs far less than an XLA compile for a graph that
may never come back; the next one compiles it with `jax.jit`, and the compiled executable
serves every later call with new values. With `background=True` that compile runs in a
background (daemon) thread while calls go on eagerly, so no request waits for XLA and a
shutdown never waits for a compile. `jit_after=0` compiles on first sight, in the caller's
thread.

Compiling is bounded: XLA's compile time and memory grow faster than the program (see
benchmarks/compile_budget.py), so a query whose weight (equations times its kind's factor) is
over `max_compile_weight` is never compiled; it keeps running eagerly, op by op, within the
request cost limits. A query that has no eager form is refused instead (`eager=False`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import jax

from engine.errors import TooLarge

log = logging.getLogger("gradtape.engine")
V = TypeVar("V")

# XLA compile cost per equation, relative to a plain evaluation, by query kind (fitted from
# benchmarks/compile_budget.py)
KIND_WEIGHT = {"evaluate": 0.7, "jvp": 0.9, "gradient": 1.0, "jacobian": 1.0, "hvp": 3.5,
               "hessian": 5.0, "minimize": 4.0, "step": 1.5}


@dataclass(frozen=True)
class CompileInfo:
    """What a key computes, for the compile budget and the compile log."""

    kind: str = "evaluate"
    eqns: int = 0
    expansion: int = 1

    @property
    def weight(self) -> float:
        return self.eqns * KIND_WEIGHT.get(self.kind, 1.0)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    compiles: int = 0
    eager_runs: int = 0
    evictions: int = 0
    over_budget: int = 0
    compile_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Entry:
    fn: Callable[..., Any]
    info: CompileInfo
    calls: int = 0
    compiled: Any = None
    compiling: Future[None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Compiler:
    """One daemon thread that runs background compiles in order: unlike an executor's
    worker, it never holds up the interpreter's exit."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[None], Callable[[], None]]] = \
            queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> Future[None]:
        future: Future[None] = Future()
        self._jobs.put((future, job))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="gradtape-compile",
                                                daemon=True)
                self._thread.start()
        return future

    def _work(self) -> None:
        while True:
            future, job = self._jobs.get()
            try:
                job()
                future.set_result(None)
            except BaseException as exc:  # reported through the future
                future.set_exception(exc)


class Lru(Generic[V]):
    """A small bounded map, least recently used out first, safe across threads: at most
    `capacity` items and, with `weight`, at most `max_weight` of their weights in all."""

    def __init__(self, capacity: int, max_weight: float = float("inf"),
                 weight: Callable[[V], float] | None = None):
        self.capacity = capacity
        self.max_weight = max_weight
        self._weigh = weight
        self.weight = 0.0  # of the items held
        self._items: OrderedDict[Hashable, tuple[V, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            self._items.move_to_end(key)
            return found[0]

    def put(self, key: Hashable, value: V) -> None:
        weight = self._weigh(value) if self._weigh is not None else 0.0
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.weight -= old[1]
            if weight > self.max_weight:  # it alone is over: kept, it would push out all
                return
            self._items[key] = (value, weight)
            self.weight += weight
            while self._items and (len(self._items) > self.capacity or
                                   self.weight > self.max_weight):
                _, (_, dropped) = self._items.popitem(last=False)
                self.weight -= dropped


class CompileCache:
    """A bounded LRU of pure functions and their compiled forms."""

    def __init__(self, capacity: int = 512, jit_after: int = 1, background: bool = False,
                 on_compile: Callable[[float], None] | None = None,
                 max_compile_weight: float = float("inf")):
        self.capacity = capacity
        self.jit_after = jit_after
        self.background = background
        self.max_compile_weight = max_compile_weight
        self._compiler = _Compiler() if background else None
        self.stats = CacheStats()
        self._on_compile = on_compile
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def is_compiled(self, key: Hashable) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry.compiled is not None

    def over_budget(self, info: CompileInfo) -> bool:
        return info.weight > self.max_compile_weight

    def call(self, key: Hashable, build: Callable[[], Callable[..., Any]], *args: Any,
             info: CompileInfo | None = None, eager: bool = True) -> Any:
        """Run the function cached under `key` (built by `build()` on a miss) on `args`.
        `eager=False`: the function has no eager form, so a key over the compile budget is
        refused (TooLarge) rather than run op by op."""
        info = info if info is not None else CompileInfo()
        if self.over_budget(info):
            if not eager:
                raise TooLarge(f"this {info.kind} has {info.eqns} equations (weight "
                               f"{info.weight:.0f}); the compile budget is "
                               f"{self.max_compile_weight:.0f} (GRADTAPE_MAX_COMPILE_WEIGHT) "
                               "and it cannot run uncompiled: make the graph smaller")
            entry = self._lookup(key, build, info)
            with self._lock:
                self.stats.eager_runs += 1
                self.stats.over_budget += 1
                if entry.calls == 1:
                    log.info("not compiling: kind=%s eqns=%d weight=%.0f over the budget %.0f;"
                             " it runs eagerly", info.kind, info.eqns, info.weight,
                             self.max_compile_weight)
            return entry.fn(*args)
        entry = self._lookup(key, build, info)
        if entry.compiled is not None:
            return entry.compiled(*args)
        if eager and entry.calls > self.jit_after and self._compiler is not None \
                and self.jit_after:
            with entry.lock:
                if entry.compiling is None:
                    entry.compiling = self._compiler.submit(
                        lambda: self._compile_into(entry, args))
        if eager and (entry.calls <= self.jit_after or entry.compiling is not None):
            with self._lock:
                self.stats.eager_runs += 1
            return entry.fn(*args)
        if entry.compiled is None:
            with entry.lock:  # one thread compiles; the others wait and reuse it
                if entry.compiled is None:
                    entry.compiled, result = self._compile(entry.fn, args, entry.info)
                    return result
        return entry.compiled(*args)

    def _lookup(self, key: Hashable, build: Callable[[], Callable[..., Any]],
                info: CompileInfo) -> _Entry:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.stats.misses += 1
                entry = _Entry(build(), info)
                self._entries[key] = entry
                if len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
                    self.stats.evictions += 1
            else:
                self.stats.hits += 1
                self._entries.move_to_end(key)
            entry.calls += 1
            return entry

    def _compile_into(self, entry: _Entry, args: tuple[Any, ...]) -> None:
        try:
            entry.compiled, _ = self._compile(entry.fn, args, entry.info)
        except Exception:  # the key keeps running eagerly, as it did before
            log.exception("background compile failed: kind=%s eqns=%d", entry.info.kind,
                          entry.info.eqns)

    def wait(self) -> None:
        """Block until every background compile submitted so far has finished."""
        for entry in list(self._entries.values()):
            if entry.compiling is not None:
                entry.compiling.result()

    def _compile(self, fn: Callable[..., Any], args: tuple[Any, ...],
                 info: CompileInfo) -> tuple[Any, Any]:
        # `jax.jit` rather than an AOT `Compiled`: its C++ dispatch path is several times
        # cheaper per call. The first call compiles (and runs, which is small beside it).
        compiled = jax.jit(fn)
        log.info("compile started: kind=%s eqns=%d weight=%.0f", info.kind, info.eqns,
                 info.weight)
        start = time.perf_counter()
        result = jax.block_until_ready(compiled(*args))
        elapsed = time.perf_counter() - start
        log.info("compile finished: kind=%s eqns=%d weight=%.0f seconds=%.3f", info.kind,
                 info.eqns, info.weight, elapsed)
        with self._lock:
            self.stats.compiles += 1
            self.stats.compile_seconds += elapsed
        if self._on_compile is not None:
            self._on_compile(elapsed)
        return compiled, result
