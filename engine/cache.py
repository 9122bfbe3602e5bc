"""The compile cache: pure functions compiled once per (structure, query, argument types).

Policy (see benchmarks/cold_start.py for the measurements behind it): the first `jit_after`
calls of a key run eagerly, op by op, which costs far less than an XLA compile for a graph that
may never come back; the next one compiles it with `jax.jit`, and the compiled executable
serves every later call with new values. With `background=True` that compile runs in a
background thread while calls go on eagerly, so no request waits for XLA. `jit_after=0`
compiles on first sight, in the caller's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jax

log = logging.getLogger("gradtape.engine")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    compiles: int = 0
    eager_runs: int = 0
    evictions: int = 0
    compile_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Entry:
    fn: Callable[..., Any]
    calls: int = 0
    compiled: Any = None
    compiling: Future[None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class CompileCache:
    """A bounded LRU of pure functions and their compiled forms."""

    def __init__(self, capacity: int = 512, jit_after: int = 1, background: bool = False,
                 on_compile: Callable[[float], None] | None = None):
        self.capacity = capacity
        self.jit_after = jit_after
        self.background = background
        self._compiler = ThreadPoolExecutor(1, "gradtape-compile") if background else None
        self.stats = CacheStats()
        self._on_compile = on_compile
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def is_compiled(self, key: Hashable) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry.compiled is not None

    def call(self, key: Hashable, build: Callable[[], Callable[..., Any]], *args: Any) -> Any:
        """Run the function cached under `key` (built by `build()` on a miss) on `args`."""
        entry = self._lookup(key, build)
        if entry.compiled is not None:
            return entry.compiled(*args)
        if entry.calls > self.jit_after and self._compiler is not None and self.jit_after:
            with entry.lock:
                if entry.compiling is None:
                    entry.compiling = self._compiler.submit(self._compile_into, entry, args)
        if entry.calls <= self.jit_after or entry.compiling is not None:
            with self._lock:
                self.stats.eager_runs += 1
            return entry.fn(*args)
        if entry.compiled is None:
            with entry.lock:  # one thread compiles; the others wait and reuse it
                if entry.compiled is None:
                    entry.compiled, result = self._compile(entry.fn, args)
                    return result
        return entry.compiled(*args)

    def _lookup(self, key: Hashable, build: Callable[[], Callable[..., Any]]) -> _Entry:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.stats.misses += 1
                entry = _Entry(build())
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
            entry.compiled, _ = self._compile(entry.fn, args)
        except Exception:  # the key keeps running eagerly, as it did before
            log.exception("background compile failed")

    def wait(self) -> None:
        """Block until every background compile submitted so far has finished."""
        for entry in list(self._entries.values()):
            if entry.compiling is not None:
                entry.compiling.result()

    def _compile(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, Any]:
        # `jax.jit` rather than an AOT `Compiled`: its C++ dispatch path is several times
        # cheaper per call. The first call compiles (and runs, which is small beside it).
        compiled = jax.jit(fn)
        start = time.perf_counter()
        result = jax.block_until_ready(compiled(*args))
        elapsed = time.perf_counter() - start
        with self._lock:
            self.stats.compiles += 1
            self.stats.compile_seconds += elapsed
        if self._on_compile is not None:
            self._on_compile(elapsed)
        return compiled, result
