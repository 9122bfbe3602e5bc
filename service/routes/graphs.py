"""Registered graphs: send a graph once, then refer to it by its content address."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Response

from service.deps import BodyBytes, ServicesDep
from service.responses import FastJSONResponse, FastRoute
from service.schemas.graphs import Graph, GraphCreated, GraphOut

router = APIRouter(prefix="/v1/graphs", tags=["graphs"], route_class=FastRoute)


@router.post("", response_model=GraphCreated, status_code=201,
             responses={200: {"model": GraphCreated, "description": "already registered"}})
async def register_graph(graph: Graph, svc: ServicesDep, response: Response,
                         size: BodyBytes) -> Any:
    """Register a graph (201 new, 200 known); the id hashes its canonical form."""
    entry, new = await svc.register_graph(graph.plain(), size)
    response.status_code = 201 if new else 200
    program = entry.program
    return GraphCreated(graph_id=entry.graph_id, inputs=list(program.inputs),
                        outputs=list(program.outputs), num_nodes=len(program.eqns))


@router.get("/{graph_id}", response_model=GraphOut)
async def get_graph(graph_id: str, svc: ServicesDep) -> Any:
    """The registered graph, as it was sent."""
    entry = await svc.graph(graph_id, loc=("path", "graph_id"))
    program = entry.program
    # the graph goes out as the JSON it was kept as, never parsed back into objects
    return FastJSONResponse({"graph_id": entry.graph_id, "inputs": list(program.inputs),
                             "outputs": list(program.outputs), "num_nodes": len(program.eqns),
                             "graph": orjson.Fragment(entry.graph_json)})
