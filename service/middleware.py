"""The one ASGI middleware in front of the app (`Gateway`): request ids and the access log,
Prometheus metrics, the request-body size limit and API keys, then the lean path for the
routes a client calls in a loop (service/fastpath.py), or else FastAPI.

One layer instead of one a concern: each ASGI layer wraps `send`, and awaits the next, for
every request; on the tutorial gradient the four layers this replaces cost as much as the
engine's own Python. It sits outside FastAPI's own middleware (its error and telemetry
layers), so that a request for the lean path goes through nothing else; an unexpected error
of a FastAPI route still reaches FastAPI's error middleware, whose 500 passes through here
and gets the request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.config import Settings
from service.errors import problem
from service.metrics import Metrics
from service.observability import (
    REQUEST_ID_HEADER,
    access_log,
    configure_logging,
    incoming_request_id,
    log_access,
    new_request_id,
    request_id,
)

if TYPE_CHECKING:  # the lean path's routes import this module's api_key_owner, by way of state
    from service.fastpath import FastPath

api_key_owner: ContextVar[str | None] = ContextVar("api_key_owner", default=None)
"""A digest of the request's API key (None without keys): sessions belong to it. The key
itself is never kept."""


def key_digest(key: bytes) -> str:
    return hashlib.sha256(b"gradtape-owner:" + key).hexdigest()[:32]


class Gateway:
    """In order, for every HTTP request:

    1. its id: the client's `X-Request-ID` when it is a sane token, else a new one, echoed
       in the answer's headers and set in `request_id` for every log line of the request;
    2. counted in flight, then in the metrics by route template, status and latency;
    3. a body over `max_body_bytes` is answered 413, by Content-Length up front or while a
       chunked body streams in;
    4. when keys are configured, /v1 routes other than health need `X-API-Key: <key>` or
       `Authorization: Bearer <key>`; the key's digest is set in `api_key_owner`;
    5. the lean path takes its routes; FastAPI everything else.

    Building it (when the app first runs) configures logging from the settings."""

    def __init__(self, app: ASGIApp, settings: Settings, metrics: Metrics,
                 fast: FastPath | None = None):
        self.app = app
        self.metrics = metrics
        self.fast = fast
        self.log_requests = settings.access_log
        self.max_body_bytes = settings.max_body_bytes
        self.keys = [k.encode() for k in settings.api_key_set]
        configure_logging(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = length = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                given = value
            elif name == b"content-length":
                length = value
        rid = incoming_request_id(given) or new_request_id()
        token = request_id.set(rid)
        id_header = (REQUEST_ID_HEADER, rid.encode("ascii"))
        start = time.perf_counter()
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", ())
                           if k.lower() != REQUEST_ID_HEADER]
                headers.append(id_header)
                message = {**message, "headers": headers}
            await send(message)

        metrics = self.metrics
        metrics.in_flight += 1
        failed = False
        try:
            size = int(length) if length is not None and length.isdigit() else None
            if size is not None and size > self.max_body_bytes:
                await problem(413, self._too_large(), slug="too-large")(
                    scope, receive, send_with_id)
            else:
                # a body with a Content-Length has that many bytes (the HTTP parser reads no
                # more); a chunked one is counted as it streams in
                receive = receive if size is not None else self._limited(receive)
                path: str = scope["path"]
                if self.keys and path.startswith("/v1/") and not path.startswith("/v1/health/"):
                    await self._authorized(scope, receive, send_with_id)
                else:
                    await self._route(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when its graceful shutdown times
            # out; tell the client to send it again (elsewhere) rather than cut it off.
            failed = True
            if status is None:
                with contextlib.suppress(Exception):
                    await problem(503, "the server is shutting down and stopped this request "
                                  "before it finished; send it again", slug="shutting-down",
                                  headers={"Retry-After": "1"})(scope, receive, send_with_id)
            raise
        except Exception:
            failed = True
            if status is None:  # FastAPI's error middleware answers before this: a safety net
                await problem(500, "internal error; the server log has the details")(
                    scope, receive, send_with_id)
            raise
        finally:
            metrics.in_flight -= 1
            seconds = time.perf_counter() - start
            template = getattr(scope.get("route"), "path", None) or "unmatched"
            metrics.observe(scope["method"], template, 500 if status is None else status,
                            seconds)
            if self.log_requests and access_log.isEnabledFor(logging.INFO):
                log_access(scope, rid, status, seconds)
            # On an error, the id stays set for the error handler's log line; the variable
            # belongs to this request's task context, which ends with it.
            if not failed:
                request_id.reset(token)

    async def _authorized(self, scope: Scope, receive: Receive, send: Send) -> None:
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
            await problem(401, f"{detail}: send it as X-API-Key or Authorization: Bearer",
                          slug="unauthorized", headers={"WWW-Authenticate": "Bearer"})(
                scope, receive, send)
            return
        token = api_key_owner.set(key_digest(given))
        try:
            await self._route(scope, receive, send)
        finally:
            api_key_owner.reset(token)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.fast.take(scope) if self.fast is not None else None
        if found is None:
            await self.app(scope, receive, send)
        else:
            assert self.fast is not None
            await self.fast.serve(found, scope, receive, send, self.app)

    def _limited(self, receive: Receive) -> Receive:
        received = 0
        limit = self.max_body_bytes

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # the route's error handler answers it
                    raise HTTPException(413, self._too_large())
            return message

        return limited_receive

    def _too_large(self) -> str:
        return (f"request body over {self.max_body_bytes} bytes (GRADTAPE_MAX_BODY_BYTES); "
                "send large tensors as b64, or in parts to a session")
