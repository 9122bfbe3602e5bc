"""ASGI middleware: the request-body size limit and API keys."""

from __future__ import annotations

import hashlib
import hmac
from contextvars import ContextVar

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import problem


class BodyLimitMiddleware:
    """Answers 413 for a body over `max_bytes`, by Content-Length up front or while a chunked
    body streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max_bytes:
                    await self._reject(scope, receive, send)
                    return
                break
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # the route's error handler answers it
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, limited_receive, send)

    def _detail(self) -> str:
        return (f"request body over {self.max_bytes} bytes (GRADTAPE_MAX_BODY_BYTES); send "
                "large tensors as b64, or in parts to a session")

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        await problem(413, self._detail(), slug="too-large")(scope, receive, send)


api_key_owner: ContextVar[str | None] = ContextVar("api_key_owner", default=None)
"""A digest of the request's API key (None without keys): sessions belong to it. The key
itself is never kept."""


def key_digest(key: bytes) -> str:
    return hashlib.sha256(b"gradtape-owner:" + key).hexdigest()[:32]


class ApiKeyMiddleware:
    """When keys are configured, /v1 routes other than health need `X-API-Key: <key>` or
    `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, keys: frozenset[str]):
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1/") or \
                path.startswith("/v1/health/"):
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                given = value
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
        # every key is compared, in constant time, so the time taken says nothing of which
        # key nearly matched
        matches = [hmac.compare_digest(given, key) for key in self.keys]
        if not any(matches):
            detail = "missing API key" if not given else "wrong API key"
            response = problem(401, f"{detail}: send it as X-API-Key or Authorization: Bearer",
                               slug="unauthorized", headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        token = api_key_owner.set(key_digest(given))
        try:
            await self.app(scope, receive, send)
        finally:
            api_key_owner.reset(token)
