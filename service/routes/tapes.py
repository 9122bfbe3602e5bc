"""Tapes: GradientTape, held in a session."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Response

from engine.sessions.state import Session
from service.deps import BodyBytes, IdempotencyDep, ServicesDep
from service.fastpath import Lean
from service.responses import FastJSONResponse, FastRoute
from service.schemas.differentiation import HessianResponse, HvpResponse, JacobianResponse
from service.schemas.sessions import (
    Gradients,
    OpenTape,
    TapeCreated,
    TapeGradient,
    TapeHvp,
    TapeInfo,
    TapeQuery,
    Watch,
)
from service.state import Services, encode_tree

router = APIRouter(prefix="/v1/sessions/{session_id}/tapes", tags=["tapes"], route_class=FastRoute,
                   dependencies=[IdempotencyDep])


@router.post("", status_code=201, response_model=TapeCreated)
async def open_tape(session_id: str, svc: ServicesDep, body: OpenTape | None = None) -> Any:
    """Open a tape; it records from now on (the start of TensorFlow's `with` block)."""
    return await answer_open(svc, {"session_id": session_id}, body, 0)


async def answer_open(svc: Services, params: Mapping[str, str], body: OpenTape | None,
                      size: int) -> Response:
    options = body or OpenTape()

    def work(s: Session) -> FastJSONResponse:
        tape = svc.runtime.open_tape(s, options.persistent, options.watch_accessed_variables)
        return FastJSONResponse({"tape_id": tape.tape_id}, status_code=201)

    return await svc.in_session(params["session_id"], work)


@router.get("/{tape_id}", response_model=TapeInfo)
async def get_tape(session_id: str, tape_id: str, svc: ServicesDep) -> Any:
    """Whether the tape records, what it watches, how many ops it holds, whether it was
    used."""
    return await svc.in_session(session_id, lambda s: svc.runtime.describe_tape(
        s, svc.runtime.tape(s, tape_id)), readonly=True)


@router.delete("/{tape_id}", status_code=204)
async def delete_tape(session_id: str, tape_id: str, svc: ServicesDep) -> Response:
    """Delete the tape and what it recorded."""
    return await answer_delete(svc, {"session_id": session_id, "tape_id": tape_id}, None, 0)


async def answer_delete(svc: Services, params: Mapping[str, str], body: None,
                        size: int) -> Response:
    def work(s: Session) -> Response:
        svc.runtime.delete_tape(s, params["tape_id"])
        return Response(status_code=204)

    return await svc.in_session(params["session_id"], work)


@router.post("/{tape_id}/watch", response_model=TapeInfo)
async def watch(session_id: str, tape_id: str, body: Watch, svc: ServicesDep) -> Any:
    """Watch constants (trainable variables are watched when used)."""
    def work(s: Session) -> Any:
        tape = svc.runtime.tape(s, tape_id)
        svc.runtime.watch(s, tape, body.tensors)
        return FastJSONResponse(svc.runtime.describe_tape(s, tape))

    return await svc.in_session(session_id, work)


def _set_state(svc: Services, session_id: str, tape_id: str, **state: bool) -> Any:
    def work(s: Session) -> Any:
        tape = svc.runtime.tape(s, tape_id)
        for key, value in state.items():
            setattr(tape, key, value)
        return FastJSONResponse(svc.runtime.describe_tape(s, tape))

    return svc.in_session(session_id, work)


@router.post("/{tape_id}/stop", response_model=TapeInfo)
async def stop(session_id: str, tape_id: str, svc: ServicesDep) -> Any:
    """Stop recording for good (the end of the `with` block); gradients can still be asked."""
    return await _set_state(svc, session_id, tape_id, stopped=True)


@router.post("/{tape_id}/pause", response_model=TapeInfo)
async def pause(session_id: str, tape_id: str, svc: ServicesDep) -> Any:
    """Stop recording until resumed (`stop_recording`)."""
    return await _set_state(svc, session_id, tape_id, paused=True)


@router.post("/{tape_id}/resume", response_model=TapeInfo)
async def resume(session_id: str, tape_id: str, svc: ServicesDep) -> Any:
    """Record again after a pause (the end of `stop_recording`)."""
    return await _set_state(svc, session_id, tape_id, paused=False)


@router.post("/{tape_id}/reset", response_model=TapeInfo)
async def reset(session_id: str, tape_id: str, svc: ServicesDep) -> Any:
    """Forget everything recorded and watched."""
    def work(s: Session) -> Any:
        tape = svc.runtime.tape(s, tape_id)
        svc.runtime.reset(s, tape)
        return FastJSONResponse(svc.runtime.describe_tape(s, tape))

    return await svc.in_session(session_id, work)


async def _ask(svc: Services, session_id: str, tape_id: str, size: int, encoding: str,
               query: Any) -> FastJSONResponse:
    return await svc.in_session(
        session_id, lambda s: FastJSONResponse(encode_tree(
            query(s, svc.runtime.tape(s, tape_id)), encoding)), body_bytes=size, compute=True)


@router.post("/{tape_id}/gradient", response_model=Gradients)
async def gradient(session_id: str, tape_id: str, body: TapeGradient, svc: ServicesDep,
                   size: BodyBytes) -> Any:
    """Gradient of target with respect to sources; `save_as` keeps the results."""
    return await answer_gradient(svc, {"session_id": session_id, "tape_id": tape_id}, body,
                                 size)


async def answer_gradient(svc: Services, params: Mapping[str, str], body: TapeGradient,
                          size: int) -> Response:
    return await _ask(svc, params["session_id"], params["tape_id"], size, body.encoding,
                      lambda s, t: svc.runtime.gradient(
                          s, t, body.target, body.sources, body.output_gradients,
                          body.unconnected_gradients, body.save_as, body.apply,
                          body.fetch_gradients, check_numerics=body.check_numerics))


@router.post("/{tape_id}/jacobian", response_model=JacobianResponse)
async def jacobian(session_id: str, tape_id: str, body: TapeQuery, svc: ServicesDep,
                   size: BodyBytes) -> Any:
    """Full Jacobian of the target with respect to each source: target.shape +
    source.shape."""
    return await _ask(svc, session_id, tape_id, size, body.encoding,
                      lambda s, t: svc.runtime.jacobian(
                          s, t, body.target, body.sources, body.unconnected_gradients,
                          check_numerics=body.check_numerics))


@router.post("/{tape_id}/batch_jacobian", response_model=JacobianResponse)
async def batch_jacobian(session_id: str, tape_id: str, body: TapeQuery, svc: ServicesDep,
                         size: BodyBytes) -> Any:
    """Per-example Jacobians: [batch, target..., source...] (examples independent)."""
    return await _ask(svc, session_id, tape_id, size, body.encoding,
                      lambda s, t: svc.runtime.jacobian(
                          s, t, body.target, body.sources, body.unconnected_gradients,
                          batch=True, check_numerics=body.check_numerics))


@router.post("/{tape_id}/hvp", summary="Hessian-vector product", response_model=HvpResponse)
async def hvp(session_id: str, tape_id: str, body: TapeHvp, svc: ServicesDep,
              size: BodyBytes) -> Any:
    """Hessian-vector product of a scalar target, with the value and the gradients."""
    return await _ask(svc, session_id, tape_id, size, body.encoding,
                      lambda s, t: svc.runtime.hvp(
                          s, t, body.target, body.sources, body.vectors,
                          body.unconnected_gradients, body.include,
                          check_numerics=body.check_numerics))


@router.post("/{tape_id}/hessian", response_model=HessianResponse)
async def hessian(session_id: str, tape_id: str, body: TapeQuery, svc: ServicesDep,
                  size: BodyBytes) -> Any:
    """Hessian blocks {a: {b: d2 target / da db}} of a scalar target."""
    return await _ask(svc, session_id, tape_id, size, body.encoding,
                      lambda s, t: svc.runtime.hessian(
                          s, t, body.target, body.sources, body.unconnected_gradients,
                          check_numerics=body.check_numerics))


TAPE = "/v1/sessions/{session_id}/tapes"
LEAN = [Lean("POST", TAPE, OpenTape, answer_open, idempotent=True),
        Lean("DELETE", TAPE + "/{tape_id}", None, answer_delete, idempotent=True),
        Lean("POST", TAPE + "/{tape_id}/gradient", TapeGradient, answer_gradient,
             idempotent=True)]
