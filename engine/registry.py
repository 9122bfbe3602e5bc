"""Registered graphs, content-addressed by the hash of their canonical form."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import NotFound
from engine.graph import canonical_form, graph_id, parse_graph
from engine.program import Program


@dataclass(frozen=True)
class RegisteredGraph:
    graph_id: str
    graph: dict[str, Any]
    program: Program


class GraphRegistry:
    """A bounded LRU of registered graphs."""

    def __init__(self, capacity: int, max_nodes: int, max_elements: int):
        self.capacity = capacity
        self.max_nodes = max_nodes
        self.max_elements = max_elements
        self._graphs: OrderedDict[str, RegisteredGraph] = OrderedDict()
        self._lock = threading.Lock()

    def parse(self, graph: Mapping[str, Any]) -> Program:
        return parse_graph(graph, max_nodes=self.max_nodes, max_elements=self.max_elements)

    def register(self, graph: Mapping[str, Any]) -> tuple[RegisteredGraph, bool]:
        """Register `graph`; returns it and whether it was new."""
        program = self.parse(graph)
        gid = graph_id(canonical_form(graph, program))
        with self._lock:
            known = self._graphs.get(gid)
            if known is not None:
                self._graphs.move_to_end(gid)
                return known, False
            entry = RegisteredGraph(gid, dict(graph), program)
            self._graphs[gid] = entry
            if len(self._graphs) > self.capacity:
                self._graphs.popitem(last=False)
            return entry, True

    def get(self, gid: str) -> RegisteredGraph:
        with self._lock:
            entry = self._graphs.get(gid)
            if entry is not None:
                self._graphs.move_to_end(gid)
        if entry is None:
            raise NotFound(f"unknown graph_id {gid!r}: register the graph with POST /v1/graphs "
                           "(registered graphs are kept in memory and may have been evicted)")
        return entry

    def __len__(self) -> int:
        return len(self._graphs)
