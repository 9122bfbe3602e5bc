"""`Idempotency-Key`: a retried mutating request is answered, not applied twice.

Requests on a session keep their answer inside the session (`Session.applied`), written in
the same commit as the change itself, so no failure between the change and its record can
apply it twice. Creating and deleting a session keep theirs in the session store.
"""

from __future__ import annotations

import hashlib
from contextvars import ContextVar
from dataclasses import dataclass

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from engine.errors import Conflict, clip
from service.responses import FastJSONResponse


@dataclass(frozen=True)
class Idempotency:
    """A mutating request's `Idempotency-Key`, and a digest of the request it names (a
    retry must be the same request)."""

    key: str
    digest: str


idempotency: ContextVar[Idempotency | None] = ContextVar("idempotency", default=None)

_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def idempotency_key(request: Request) -> None:
    """Read `Idempotency-Key` (on POST, PUT, PATCH and DELETE): 1 to 255 printable ASCII
    characters, which the client makes unique per operation (a UUID, say)."""
    key = request.headers.get("idempotency-key")
    if key is None or request.method not in _MUTATING:
        idempotency.set(None)
        return
    if not 1 <= len(key) <= 255 or not key.isascii() or not key.isprintable():
        raise RequestValidationError([{
            "loc": ("header", "Idempotency-Key"), "type": "value_error",
            "msg": "Idempotency-Key must be 1 to 255 printable ASCII characters (a UUID, say)"}])
    body = await request.body()
    digest = hashlib.sha256(b"\0".join((request.method.encode(), request.url.path.encode(),
                                        body))).hexdigest()
    idempotency.set(Idempotency(key, digest))


Record = tuple[str, int, str]  # digest of the request, status, answer body
MAX_APPLIED = 64  # answers a session keeps (its latest requests')
MAX_KEPT_ANSWER = 65_536  # bytes; a longer answer is not kept, only that it was given
NOT_KEPT = "\0"


def record(request: Idempotency, response: Response) -> Record:
    body = bytes(response.body)
    if len(body) > MAX_KEPT_ANSWER:  # a session must not carry big answers in every commit
        return request.digest, response.status_code, NOT_KEPT
    return request.digest, response.status_code, body.decode()


def replay(request: Idempotency, found: Record) -> Response:
    """The first answer again, or 422 when the key came with another request (or 409 when
    the request was applied but its answer was too long to keep)."""
    digest, status, body = found
    if digest != request.digest:
        raise RequestValidationError([{
            "loc": ("header", "Idempotency-Key"), "type": "value_error",
            "msg": "this Idempotency-Key was used with a different request (method, path or "
                   "body); use a new key for a new request"}])
    if body == NOT_KEPT:
        raise Conflict(f"this request (Idempotency-Key {clip(request.key)}) was applied "
                       f"already; its answer was over {MAX_KEPT_ANSWER} bytes and was not "
                       "kept: read the values you need with GET, or ask with fetch [] or "
                       "encoding \"none\"")
    if not body:
        return Response(status_code=status, headers={"Idempotent-Replayed": "true"})
    return FastJSONResponse(orjson.loads(body), status_code=status,
                            headers={"Idempotent-Replayed": "true"})


def keep(applied: dict[str, Record], request: Idempotency, response: Response) -> None:
    """Remember a session request's answer, beside the change it made."""
    applied[request.key] = record(request, response)
    while len(applied) > MAX_APPLIED:
        del applied[next(iter(applied))]
