"""The lean path for the stateless routes (POST /v1/gradient, /v1/hvp, ...).

A stateless query with a registered graph costs the engine tens of microseconds; FastAPI's
router (matching the path against every route), its dependency solving and its request and
response wrappers cost several times that. This ASGI middleware sits just outside the router,
takes a POST to one of the stateless paths with a JSON body, validates it with the route's
own request model and answers with the route's own `answer` (service/routes/differentiation.py),
so both paths give the same answers. Errors are mapped by service/errors.py, as for every
route. Anything it does not take (another media type, a body that is not valid JSON or not
a valid request: their 400/415/422 answers are FastAPI's) goes on to the router with the body
it read, so a client sees no difference but the time.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import bodies, errors
from service.bodies import BINARY_HEADER
from service.routes.differentiation import Stateless
from service.state import Services


class StatelessFastPath:
    def __init__(self, app: ASGIApp, services: Services,
                 routes: Mapping[str, tuple[Stateless, BaseRoute]]):
        self.app = app
        self.services = services
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        entry = self.routes.get(scope.get("path", "")) if scope["type"] == "http" and \
            scope["method"] == "POST" else None
        if entry is None or not (_json(scope) or BINARY_HEADER in dict(scope["headers"])):
            await self.app(scope, receive, send)
            return
        stateless, route = entry
        scope["route"] = route  # the template for metrics and the access log
        try:
            body = await _read(receive)
        except Exception as exc:  # the body limit, while a chunked body streams in
            await (await errors.answer(Request(scope), exc))(scope, receive, send)
            return
        if body is None:  # the client went away before its body was in
            return
        replay = _replay(body, receive)
        try:
            req = stateless.model.model_validate(bodies.parse(scope, body))
        except (orjson.JSONDecodeError, ValidationError):
            await self.app(scope, replay, send)  # FastAPI words the 400 or 422
            return
        except Exception as exc:  # a binary part that does not match its header
            await (await errors.answer(Request(scope, replay), exc))(scope, replay, send)
            return
        try:
            response = await stateless.answer(self.services, req, len(body))
        except Exception as exc:
            response = await errors.answer(Request(scope, replay), exc)
        await response(scope, replay, send)


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
