"""Sessions: an eager workspace of named tensors and variables, held on the server."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Response

from engine.sessions.state import Session
from service.deps import BodyBytes, IdempotencyDep, ServicesDep
from service.fastpath import Lean
from service.responses import FastJSONResponse, FastRoute
from service.schemas.sessions import (
    CreateSession,
    PutTensor,
    RunRequest,
    SessionCreated,
    SessionInfo,
    TensorInfo,
    Values,
)
from service.schemas.tensors import Encoding, TensorOut
from service.state import Services, encode_tree

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], route_class=FastRoute,
                   dependencies=[IdempotencyDep])


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


@router.post("", status_code=201, response_model=SessionCreated)
async def create_session(svc: ServicesDep, body: CreateSession | None = None) -> Any:
    """Create a session: an eager workspace of named tensors and tapes. Its id goes in the
    path of every other session route."""
    async def make() -> Response:
        session = await svc.create_session(body.ttl_seconds if body else None)
        return FastJSONResponse(SessionCreated(
            session_id=session.session_id, expires_at=iso(session.expires_at),
            ttl_seconds=session.ttl_seconds).model_dump(), status_code=201)

    return await svc.once(make)


@router.get("/{session_id}", response_model=SessionInfo)
async def get_session(session_id: str, svc: ServicesDep) -> Any:
    """The session's tensors (name, dtype, shape, variable, trainable), tapes, bytes held and
    expiry."""
    info = await svc.in_session(session_id, svc.runtime.describe, compute=True,
                                readonly=True)
    return {**info, "expires_at": iso(info["expires_at"])}


@router.delete("/{session_id}", status_code=204)
async def delete_session(session_id: str, svc: ServicesDep) -> Response:
    """Delete the session and everything in it."""
    async def make() -> Response:
        await svc.delete_session(session_id)
        return Response(status_code=204)

    return await svc.once(make)


@router.put("/{session_id}/tensors/{name}", response_model=TensorInfo)
async def put_tensor(session_id: str, name: str, body: PutTensor, svc: ServicesDep,
                     size: BodyBytes) -> Any:
    """Bind `name` to a constant or a variable."""
    def work(s: Session) -> FastJSONResponse:
        value = svc.runtime.put_tensor(s, name, body.value, body.variable, body.trainable)
        return FastJSONResponse(TensorInfo(
            name=name, dtype=value.dtype.name, shape=list(value.shape),
            variable=body.variable, trainable=body.trainable and body.variable).model_dump())

    return await svc.in_session(session_id, work, body_bytes=size, compute=True)


@router.get("/{session_id}/tensors/{name}", response_model=TensorOut)
async def get_tensor(session_id: str, name: str, svc: ServicesDep,
                     encoding: Encoding = "json") -> Any:
    """The tensor bound to `name`."""
    return await svc.in_session(session_id, lambda s: svc.runtime.answer_tensor(
        s, name, lambda v: FastJSONResponse(encode_tree(v, encoding))), compute=True,
        readonly=True)


@router.delete("/{session_id}/tensors/{name}", status_code=204)
async def delete_tensor(session_id: str, name: str, svc: ServicesDep) -> Response:
    """Unbind `name`."""
    def work(s: Session) -> Response:
        svc.runtime.delete_tensor(s, name)
        return Response(status_code=204)

    return await svc.in_session(session_id, work)


@router.post("/{session_id}/run", response_model=Values)
async def run(session_id: str, body: RunRequest, svc: ServicesDep, size: BodyBytes) -> Any:
    """Run nodes eagerly, in order; tapes that are recording record them."""
    return await answer_run(svc, {"session_id": session_id}, body, size)


async def answer_run(svc: Services, params: Mapping[str, str], body: RunRequest,
                     size: int) -> Response:
    nodes = [n.model_dump(exclude_unset=True) for n in body.nodes]
    functions = {k: f.model_dump(exclude_unset=True) for k, f in body.functions.items()}
    return await svc.in_session(params["session_id"], lambda s: FastJSONResponse({
        "values": encode_tree(svc.runtime.run(
            s, nodes, body.fetch, svc.settings.max_nodes, body.inputs, body.watch,
            check_numerics=body.check_numerics, functions=functions), body.encoding)}),
        body_bytes=size, compute=True)


LEAN = [Lean("POST", "/v1/sessions/{session_id}/run", RunRequest, answer_run,
             idempotent=True)]
