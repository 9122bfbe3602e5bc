"""Registered graphs: send a graph once, then refer to it by its content address.

POST /v1/graphs takes a JSON graph or, with `Content-Type: application/onnx`, the bytes of an
ONNX model, which the engine translates into a JSON graph (engine/onnx) and registers as any
other: GET /v1/graphs/{id} returns that translation.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from engine.onnx import MEDIA_TYPE as ONNX
from engine.onnx import translate
from service import bodies
from service.deps import BodyBytes, ServicesDep
from service.responses import FastJSONResponse, FastRoute
from service.schemas.graphs import Graph, GraphCreated, GraphOut

router = APIRouter(prefix="/v1/graphs", tags=["graphs"], route_class=FastRoute)

BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/Graph"}},
    ONNX: {"schema": {"type": "string", "format": "binary",
                      "description": "a serialized ONNX ModelProto (the bytes of a .onnx "
                                     "file)"}}}}}
"""The body, documented here: the handler reads it itself, since it takes two media types."""


async def graph_or_model(request: Request) -> Graph | bytes:
    """A JSON graph, checked as FastAPI checks a body (malformed JSON, then the schema), or
    the bytes of an ONNX model."""
    body = await request.body()
    if request.headers.get("content-type", "").split(";", 1)[0].strip().lower() == ONNX:
        return body
    if not body:
        raise RequestValidationError([{"type": "missing", "loc": ("body",),
                                       "msg": "Field required", "input": None}])
    try:  # tensors in a binary part are kept as the base64 JSON they could have been sent as
        data = bodies.as_json(bodies.parse(request.scope, body))
    except orjson.JSONDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos),
                                       "msg": "JSON decode error", "input": {},
                                       "ctx": {"error": exc.msg}}]) from None
    try:
        return Graph.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])}
                                      for e in exc.errors()]) from None


@router.post("", response_model=GraphCreated, status_code=201, openapi_extra=BODY,
             responses={200: {"model": GraphCreated, "description": "already registered"}})
async def register_graph(body: Annotated[Graph | bytes, Depends(graph_or_model)],
                         svc: ServicesDep, response: Response, size: BodyBytes) -> Any:
    """Register a graph, or an ONNX model as its translation (201 new, 200 known); the id
    hashes the graph's canonical form."""
    if isinstance(body, bytes):
        limits = svc.engine.limits
        graph = await svc.offload(lambda: translate(body, max_elements=limits.max_elements,
                                                    max_nodes=limits.max_nodes))
    else:
        graph = body.plain()
    entry, new = await svc.register_graph(graph, size)
    response.status_code = 201 if new else 200
    program = entry.program
    return GraphCreated(graph_id=entry.graph_id, inputs=list(program.inputs),
                        outputs=list(program.outputs), num_nodes=len(program.eqns))


@router.get("/{graph_id}", response_model=GraphOut)
async def get_graph(graph_id: str, svc: ServicesDep) -> Any:
    """The registered graph, as it was sent (an ONNX model: its translation)."""
    entry = await svc.graph(graph_id, loc=("path", "graph_id"))
    program = entry.program
    # the graph goes out as the JSON it was kept as, never parsed back into objects
    return FastJSONResponse({"graph_id": entry.graph_id, "inputs": list(program.inputs),
                             "outputs": list(program.outputs), "num_nodes": len(program.eqns),
                             "graph": orjson.Fragment(entry.graph_json)})
