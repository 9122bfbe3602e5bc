"""Stateless differentiation: one request in, values and derivatives out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter

from engine.compute import Bound
from service.deps import BodyBytes, ServicesDep
from service.fastpath import Lean
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

Query = Callable[[Services, Any, Bound], dict[str, Any]]


@dataclass(frozen=True)
class Stateless:
    """One stateless route: its request model and the engine query it answers. The FastAPI
    route (documentation, and every request the fast path hands back) and the fast path
    (service/fastpath.py, through `lean`) both run `answer`."""

    path: str
    model: type[GraphRequest]
    query: Query

    def lean(self) -> Lean:
        return Lean("POST", self.path, self.model,
                    lambda svc, _, req, size: self.answer(svc, req, size))

    async def answer(self, svc: Services, req: Any, size: int) -> FastJSONResponse:
        registered = await svc.graph(req.graph_id) if req.graph_id is not None else None

        def work() -> FastJSONResponse:  # parsing, binding and encoding included: off the loop
            program = registered.program if registered else svc.parse(req.graph)  # when big
            return FastJSONResponse(encode_tree(
                self.query(svc, req, svc.engine.bind(program, req.inputs, batch=req.batch,
                                                     check_numerics=req.check_numerics)),
                req.encoding))

        return await svc.run(work, body_bytes=size)


ROUTES = {r.path: r for r in (
    Stateless("/v1/evaluate", EvaluateRequest,
              lambda svc, req, b: {"values": svc.engine.evaluate(b, req.outputs)}),
    Stateless("/v1/gradient", GradientRequest, lambda svc, req, b: svc.engine.gradient(
        b, req.target, req.sources, req.output_gradients, req.unconnected_gradients)),
    Stateless("/v1/jacobian", JacobianRequest, lambda svc, req, b: svc.engine.jacobian(
        b, req.target, req.sources, req.unconnected_gradients)),
    Stateless("/v1/hvp", HvpRequest, lambda svc, req, b: svc.engine.hvp(
        b, req.target, req.sources, req.vectors, req.unconnected_gradients, req.include)),
    Stateless("/v1/hessian", HessianRequest, lambda svc, req, b: svc.engine.hessian(
        b, req.target, req.sources, req.unconnected_gradients)),
    Stateless("/v1/jvp", JvpRequest,
              lambda svc, req, b: svc.engine.jvp(b, req.tangents, req.outputs)),
)}
LEAN = [r.lean() for r in ROUTES.values()]


@router.post("/evaluate", summary="Evaluate", response_model=EvaluateResponse)
async def evaluate(req: EvaluateRequest, svc: ServicesDep, size: BodyBytes) -> Any:
    """Values of the graph's outputs (or of any named intermediate)."""
    return await ROUTES["/v1/evaluate"].answer(svc, req, size)


@router.post("/gradient", summary="Gradient or VJP", response_model=GradientResponse)
async def gradient(req: GradientRequest, svc: ServicesDep, size: BodyBytes) -> Any:
    """Gradient (or VJP, with `output_gradients`) of the target(s) with respect to sources."""
    return await ROUTES["/v1/gradient"].answer(svc, req, size)


@router.post("/jacobian", summary="Jacobian", response_model=JacobianResponse)
async def jacobian(req: JacobianRequest, svc: ServicesDep, size: BodyBytes) -> Any:
    """Full Jacobian, shaped target.shape + source.shape; forward or reverse mode by size."""
    return await ROUTES["/v1/jacobian"].answer(svc, req, size)


@router.post("/hvp", summary="Hessian-vector product", response_model=HvpResponse)
async def hvp(req: HvpRequest, svc: ServicesDep, size: BodyBytes) -> Any:
    """Hessian-vector product of a scalar target, forward-over-reverse (no Hessian built)."""
    return await ROUTES["/v1/hvp"].answer(svc, req, size)


@router.post("/hessian", summary="Hessian", response_model=HessianResponse)
async def hessian(req: HessianRequest, svc: ServicesDep, size: BodyBytes) -> Any:
    """Hessian blocks {a: {b: d2 target / da db}} of a scalar target."""
    return await ROUTES["/v1/hessian"].answer(svc, req, size)


@router.post("/jvp", summary="Jacobian-vector product (forward mode)", response_model=JvpResponse)
async def jvp(req: JvpRequest, svc: ServicesDep, size: BodyBytes) -> Any:
    """Forward-mode: outputs and their directional derivatives along the tangents."""
    return await ROUTES["/v1/jvp"].answer(svc, req, size)
