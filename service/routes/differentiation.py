"""Stateless differentiation: one request in, values and derivatives out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

from engine.compute import Bound
from service.deps import BodyBytes, ServicesDep
from service.responses import FastJSONResponse, FastRoute
from service.schemas.differentiation import (
    EvaluateRequest,
    EvaluateResponse,
    GradientRequest,
    GradientResponse,
    GraphRequest,
    HessianRequest,
    HessianResponse,
    HvpRequest,
    HvpResponse,
    JacobianRequest,
    JacobianResponse,
    JvpRequest,
    JvpResponse,
)
from service.state import Services, encode_tree

router = APIRouter(prefix="/v1", tags=["differentiation"], route_class=FastRoute)


async def _answer(svc: Services, req: GraphRequest, size: int,
                  query: Callable[[Bound], dict[str, Any]]) -> FastJSONResponse:
    registered = await svc.graph(req.graph_id) if req.graph_id is not None else None

    def work() -> FastJSONResponse:  # parsing, binding and encoding included: off the loop
        program = registered.program if registered else svc.parse(req.graph)  # when big
        return FastJSONResponse(encode_tree(query(svc.engine.bind(program, req.inputs)),
                                            req.encoding))

    return await svc.run(work, body_bytes=size)


@router.post("/evaluate", summary="Evaluate", response_model=EvaluateResponse)
async def evaluate(req: EvaluateRequest, svc: ServicesDep, size: BodyBytes) -> Any:
    """Values of the graph's outputs (or of any named intermediate)."""
    return await _answer(svc, req, size,
                         lambda b: {"values": svc.engine.evaluate(b, req.outputs)})


@router.post("/gradient", summary="Gradient or VJP", response_model=GradientResponse)
async def gradient(req: GradientRequest, svc: ServicesDep, size: BodyBytes) -> Any:
    """Gradient (or VJP, with `output_gradients`) of the target(s) with respect to sources."""
    return await _answer(svc, req, size, lambda b: svc.engine.gradient(
        b, req.target, req.sources, req.output_gradients, req.unconnected_gradients))


@router.post("/jacobian", summary="Jacobian", response_model=JacobianResponse)
async def jacobian(req: JacobianRequest, svc: ServicesDep, size: BodyBytes) -> Any:
    """Full Jacobian, shaped target.shape + source.shape; forward or reverse mode by size."""
    return await _answer(svc, req, size, lambda b: svc.engine.jacobian(
        b, req.target, req.sources, req.unconnected_gradients))


@router.post("/hvp", summary="Hessian-vector product", response_model=HvpResponse)
async def hvp(req: HvpRequest, svc: ServicesDep, size: BodyBytes) -> Any:
    """Hessian-vector product of a scalar target, forward-over-reverse (no Hessian built)."""
    return await _answer(svc, req, size, lambda b: svc.engine.hvp(
        b, req.target, req.sources, req.vectors, req.unconnected_gradients, req.include))


@router.post("/hessian", summary="Hessian", response_model=HessianResponse)
async def hessian(req: HessianRequest, svc: ServicesDep, size: BodyBytes) -> Any:
    """Hessian blocks {a: {b: d2 target / da db}} of a scalar target."""
    return await _answer(svc, req, size, lambda b: svc.engine.hessian(
        b, req.target, req.sources, req.unconnected_gradients))


@router.post("/jvp", summary="Jacobian-vector product (forward mode)", response_model=JvpResponse)
async def jvp(req: JvpRequest, svc: ServicesDep, size: BodyBytes) -> Any:
    """Forward-mode: outputs and their directional derivatives along the tangents."""
    return await _answer(svc, req, size,
                         lambda b: svc.engine.jvp(b, req.tangents, req.outputs))
