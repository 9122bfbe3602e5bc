"""Registered graphs, content-addressed by the hash of their canonical form.

The registry is bounded by count and by bytes: each graph is kept as the compact JSON it was
sent as (not as Python objects, which take several times the room) plus its parsed Program,
whose constants are counted by their array bytes.
"""

from __future__ import annotations

import hashlib
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from engine.compute import Limits
from engine.cost import human_bytes
from engine.errors import NotFound, TooLarge, clip
from engine.graph import canonical_form, graph_id, parse_graph
from engine.program import Program

EQN_OVERHEAD = 400  # bytes of one parsed equation with its tuples, measured with tracemalloc
INLINE_CAPACITY = 256  # inline graphs whose parse is remembered, by the hash of their JSON
INLINE_MAX_BYTES = 64 * 1024**2  # and at most this much of them in all


@dataclass(frozen=True)
class RegisteredGraph:
    graph_id: str
    graph_json: bytes  # the graph as it was sent, serialized
    program: Program
    nbytes: int

    @property
    def graph(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.graph_json)
        return parsed


class SharedGraphs(ABC):
    """Registered graphs kept where every replica finds them (by id, as sent), bounded by
    count and bytes there too."""

    @abstractmethod
    async def put(self, entry: RegisteredGraph) -> bool:
        """Keep `entry`; True when it was not known."""

    @abstractmethod
    async def get(self, gid: str) -> bytes | None:
        """The graph's JSON, or None when unknown (or evicted)."""


class GraphRegistry:
    """A bounded LRU of registered graphs: parsed, in this process. With a shared store
    behind it, it is this replica's cache of the graphs every replica knows."""

    def __init__(self, capacity: int, limits: Limits | None = None,
                 max_bytes: int = 512 * 1024**2):
        self.capacity = capacity
        self.limits = limits if limits is not None else Limits()
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._graphs: OrderedDict[str, RegisteredGraph] = OrderedDict()
        self._inline: OrderedDict[bytes, tuple[Program, int]] = OrderedDict()
        self.inline_bytes = 0
        self._lock = threading.Lock()

    def parse(self, graph: Mapping[str, Any]) -> Program:
        limits = self.limits
        return parse_graph(graph, max_nodes=limits.max_nodes, max_elements=limits.max_elements,
                           max_args=limits.max_args_per_node, max_edges=limits.max_edges)

    def parse_inline(self, graph: Mapping[str, Any]) -> Program:
        """The Program of a graph sent inline: parsed once per distinct graph (a client in a
        loop sends the same one every time), found again by the hash of its JSON."""
        blob = orjson.dumps(graph, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
        key = hashlib.blake2b(blob, digest_size=16).digest()
        with self._lock:
            known = self._inline.get(key)
            if known is not None:
                self._inline.move_to_end(key)
                return known[0]
        program = self.parse(graph)  # an invalid graph raises: nothing is remembered
        size = len(blob) + EQN_OVERHEAD * len(program.eqns)
        if size > INLINE_MAX_BYTES // 16:
            return program  # a big graph: register it (POST /v1/graphs) to keep it
        with self._lock:
            if key not in self._inline:
                self._inline[key] = (program, size)
                self.inline_bytes += size
                while len(self._inline) > INLINE_CAPACITY or \
                        self.inline_bytes > INLINE_MAX_BYTES:
                    _, (_, dropped) = self._inline.popitem(last=False)
                    self.inline_bytes -= dropped
        return program

    def register(self, graph: Mapping[str, Any]) -> tuple[RegisteredGraph, bool]:
        """Register `graph`; returns it and whether it was new."""
        program = self.parse(graph)
        gid = graph_id(canonical_form(graph, program))
        with self._lock:
            known = self._graphs.get(gid)
            if known is not None:
                self._graphs.move_to_end(gid)
                return known, False
        blob = orjson.dumps(graph, option=orjson.OPT_SERIALIZE_NUMPY)
        size = len(blob) + EQN_OVERHEAD * len(program.eqns) + sum(
            getattr(lit, "nbytes", 8) for lit in program.literals) + sum(
            value.nbytes for value in program.input_defaults.values())
        if size > self.max_bytes:
            raise TooLarge(f"the graph takes {human_bytes(size)} to keep; registered graphs "
                           f"hold at most {human_bytes(self.max_bytes)} "
                           "(GRADTAPE_GRAPH_CACHE_BYTES): send large constants as inputs "
                           "instead")
        entry = RegisteredGraph(gid, blob, program, size)
        with self._lock:
            if gid in self._graphs:  # registered by another thread meanwhile
                return self._graphs[gid], False
            self._graphs[gid] = entry
            self.nbytes += size
            while len(self._graphs) > self.capacity or self.nbytes > self.max_bytes:
                _, dropped = self._graphs.popitem(last=False)
                self.nbytes -= dropped.nbytes
            return entry, True

    def get(self, gid: str) -> RegisteredGraph:
        with self._lock:
            entry = self._graphs.get(gid)
            if entry is not None:
                self._graphs.move_to_end(gid)
        if entry is None:
            raise NotFound(f"unknown graph_id {clip(gid)}: register the graph with POST "
                           "/v1/graphs (registered graphs are kept in memory and may have been "
                           "evicted)")
        return entry

    def __len__(self) -> int:
        return len(self._graphs)
