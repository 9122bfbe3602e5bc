"""Optimisers: optax's update rules, with their state held in the session."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Response

from engine.sessions.state import Session
from engine.sessions.training import train_step
from service.deps import BodyBytes, IdempotencyDep, ServicesDep
from service.fastpath import Lean
from service.responses import FastJSONResponse, FastRoute
from service.schemas.optimizers import (
    ApplyGradients,
    CreateOptimizer,
    OptimizerInfo,
    Step,
    StepAnswer,
    StepRequest,
)
from service.state import Services, encode_tree

router = APIRouter(prefix="/v1/sessions/{session_id}/optimizers", tags=["optimizers"],
                   route_class=FastRoute, dependencies=[IdempotencyDep])


@router.post("", status_code=201, response_model=OptimizerInfo)
async def create_optimizer(session_id: str, body: CreateOptimizer, svc: ServicesDep) -> Any:
    """An optimiser of some variables, with a fresh state (TensorFlow's `optimizer = ...`)."""
    def work(s: Session) -> FastJSONResponse:
        opt = svc.runtime.create_optimizer(s, body.name, body.method, body.learning_rate,
                                           body.options, body.variables)
        return FastJSONResponse(svc.runtime.describe_optimizer(s, opt), status_code=201)

    return await svc.in_session(session_id, work, compute=True)


@router.get("/{optimizer}", response_model=OptimizerInfo)
async def get_optimizer(session_id: str, optimizer: str, svc: ServicesDep) -> Any:
    return await svc.in_session(session_id, lambda s: svc.runtime.describe_optimizer(
        s, svc.runtime.optimizer(s, optimizer)), readonly=True)


@router.delete("/{optimizer}", status_code=204)
async def delete_optimizer(session_id: str, optimizer: str, svc: ServicesDep) -> Response:
    def work(s: Session) -> Response:
        svc.runtime.delete_optimizer(s, optimizer)
        return Response(status_code=204)

    return await svc.in_session(session_id, work)


@router.post("/{optimizer}/apply", response_model=Step)
async def apply(session_id: str, optimizer: str, body: ApplyGradients, svc: ServicesDep,
                size: BodyBytes) -> Any:
    """One update of the variables given gradients (TensorFlow's `apply_gradients`)."""
    return await svc.in_session(session_id, lambda s: FastJSONResponse(
        svc.runtime.apply_gradients(s, optimizer, body.gradients)), body_bytes=size,
        compute=True)


steps = APIRouter(prefix="/v1/sessions/{session_id}", tags=["optimizers"],
                  route_class=FastRoute, dependencies=[IdempotencyDep])


@steps.post("/step", response_model=StepAnswer)
async def step(session_id: str, body: StepRequest, svc: ServicesDep, size: BodyBytes) -> Any:
    """A training step in one request: forward, gradient and the optimizer's update, compiled
    as one function; the weights never leave the server."""
    return await answer_step(svc, {"session_id": session_id}, body, size)


async def answer_step(svc: Services, params: Mapping[str, str], body: StepRequest,
                      size: int) -> Response:
    nodes = [n.model_dump(exclude_unset=True) for n in body.nodes]

    def work(s: Session) -> FastJSONResponse:
        answer = train_step(svc.runtime, s, nodes, body.inputs, body.target, body.optimizer,
                            body.fetch, body.repeat, svc.settings.max_nodes)
        return FastJSONResponse({**answer, "values": encode_tree(answer["values"],
                                                                  body.encoding)})

    return await svc.in_session(params["session_id"], work, body_bytes=size, compute=True)


LEAN = [Lean("POST", "/v1/sessions/{session_id}/step", StepRequest, answer_step,
             idempotent=True)]
