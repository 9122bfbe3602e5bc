"""The lean path for the routes a client calls in a loop: the stateless queries (POST
/v1/gradient, /v1/hvp, ...) and a training loop's session requests (a step, a run, a tape's
gradient, opening and deleting tapes).

A stateless query with a registered graph costs the engine tens of microseconds; FastAPI's
router (matching the path against every route), its dependency solving and its request and
response wrappers cost several times that. The app's gateway (service/middleware.py) hands
`FastPath` a request to one of the routes of its table (`Lean`, declared by each route module
next to its routes) with a JSON body; it validates it with the route's own request model and
answers with the route's own `answer`, which the FastAPI route calls too, so both paths give
the same answers. Errors are mapped by service/errors.py, as for every route. Anything it does not
take (another media type, a body that is not valid JSON or not a valid request: their
400/415/422 answers are FastAPI's) goes on to the router with the body it read, so a client
sees no difference but the time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import bodies, errors
from service.bodies import BINARY_HEADER
from service.idempotency import idempotency_key
from service.state import Services

Answer = Callable[[Services, Mapping[str, str], Any, int], Awaitable[Response]]


@dataclass(frozen=True)
class Lean:
    """A route the lean path answers: `answer(services, path parameters, the validated
    body (None when `model` is None: a route without a body), the body's size)`.
    `idempotent`: the route reads `Idempotency-Key`, as its router's dependency does."""

    method: str
    path: str  # the route's template, "/v1/sessions/{session_id}/step"
    model: type[BaseModel] | None
    answer: Answer
    idempotent: bool = False

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.split("/"))


Found = tuple[Lean, BaseRoute, dict[str, str]]  # the route, FastAPI's route, path parameters


class FastPath:
    def __init__(self, services: Services, routes: Sequence[tuple[Lean, BaseRoute]]):
        self.services = services
        self.exact = {(lean.method, lean.path): (lean, route) for lean, route in routes
                      if "{" not in lean.path}
        self.templates = [(lean.method, lean.segments, lean, route) for lean, route in routes
                          if "{" in lean.path]

    def match(self, method: str, path: str) -> Found | None:
        found = self.exact.get((method, path))
        if found is not None:
            return (*found, {})
        parts = path.split("/")
        for want, segments, lean, route in self.templates:
            if want != method or len(segments) != len(parts):
                continue
            params: dict[str, str] = {}
            for segment, part in zip(segments, parts, strict=True):
                if segment.startswith("{"):
                    if not part:
                        break
                    params[segment[1:-1]] = part
                elif segment != part:
                    break
            else:
                return lean, route, params
        return None

    def take(self, scope: Scope) -> Found | None:
        """The route of the table this request is for, when the lean path can answer it: a
        JSON body (or a binary one) for a route with a body."""
        found = self.match(scope["method"], scope["path"])
        if found is None or (found[0].model is not None and not (
                _json(scope) or BINARY_HEADER in dict(scope["headers"]))):
            return None
        return found

    async def serve(self, found: Found, scope: Scope, receive: Receive, send: Send,
                    fallback: ASGIApp) -> None:
        """Answer a request `take` took; `fallback` (FastAPI) words what is not a valid
        request."""
        lean, route, params = found
        scope["route"] = route  # the template for metrics and the access log
        scope["path_params"] = params
        try:
            body = await _read(receive)
        except Exception as exc:  # the body limit, while a chunked body streams in
            await (await errors.answer(Request(scope), exc))(scope, receive, send)
            return
        if body is None:  # the client went away before its body was in
            return
        req = None
        if lean.model is not None:
            try:
                req = lean.model.model_validate(bodies.parse(scope, body))
            except (orjson.JSONDecodeError, ValidationError):
                # FastAPI words the 400 or 422
                await fallback(scope, _replay(body, receive), send)
                return
            except Exception as exc:  # a binary part that does not match its header
                await (await errors.answer(Request(scope), exc))(scope, receive, send)
                return
        try:
            if lean.idempotent:
                await idempotency_key(Request(scope, _replay(body, receive)))
            response = await lean.answer(self.services, params, req, len(body))
        except Exception as exc:
            response = await errors.answer(Request(scope), exc)
        await response(scope, receive, send)  # an answer reads no more of the request


def _json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


async def _read(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives `body` once, then waits on the real one (for a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
