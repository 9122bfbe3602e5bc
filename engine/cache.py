"""The compile cache: pure functions compiled once per (structure, query, argument types).

Policy (see benchmarks/cold_start.py for the measurements behind it): the first time a key is
seen the function runs eagerly, op by op, which costs far less than an XLA compile for a graph
that may never come back; from the second time on, it is compiled with `jax.jit` and the
compiled executable is reused for every later call with new values. `jit_after=0` compiles on
first sight instead.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import jax


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
    lock: threading.Lock = field(default_factory=threading.Lock)


class CompileCache:
    """A bounded LRU of pure functions and their compiled forms."""

    def __init__(self, capacity: int = 512, jit_after: int = 1,
                 on_compile: Callable[[float], None] | None = None):
        self.capacity = capacity
        self.jit_after = jit_after
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
        if entry.compiled is None and entry.calls <= self.jit_after:
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

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
