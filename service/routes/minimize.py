"""Minimization: a scalar target minimized over some inputs, in one compiled loop."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter

from engine.minimize import minimize as run_minimize
from service.deps import BodyBytes, ServicesDep
from service.responses import FastJSONResponse, FastRoute
from service.schemas.minimize import (
    EXAMPLE_REQUEST,
    EXAMPLE_RESPONSE,
    MinimizeRequest,
    MinimizeResponse,
)
from service.state import encode_tree

router = APIRouter(prefix="/v1", tags=["differentiation"], route_class=FastRoute)


def _number(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"


@router.post(
    "/minimize", summary="Minimize", response_model=MinimizeResponse,
    openapi_extra={"requestBody": {"content": {"application/json": {"examples": {
        "quadratic": {"summary": "a quadratic, by L-BFGS", "value": EXAMPLE_REQUEST}}}}}},
    responses={200: {"content": {"application/json": {"example": EXAMPLE_RESPONSE}}}})
async def minimize(req: MinimizeRequest, svc: ServicesDep, size: BodyBytes) -> Any:
    """Minimize the scalar `target` over `variables` (inputs), from their values in
    `inputs`: L-BFGS by default, or a first-order method, in one compiled loop that stops
    when the gradient's norm is at most `tolerance`, after `max_iterations`, or before a step
    whose objective or gradient is not finite."""
    registered = await svc.graph(req.graph_id) if req.graph_id is not None else None

    def work() -> FastJSONResponse:  # parsing, binding and encoding included: off the loop
        program = registered.program if registered else svc.parse(req.graph)
        bound = svc.engine.bind(program, req.inputs)
        found = run_minimize(svc.engine, bound, req.target, req.variables, method=req.method,
                             learning_rate=req.learning_rate, options=req.options,
                             max_iterations=req.max_iterations, tolerance=req.tolerance,
                             history=req.history)
        answer = {**found, "value": encode_tree(found["value"], req.encoding),
                  "variables": encode_tree(found["variables"], req.encoding),
                  "gradient_norm": _number(found["gradient_norm"])}
        return FastJSONResponse(answer)

    return await svc.run(work, body_bytes=size)
