"""Every failure becomes an RFC 9457 problem+json answer, here and nowhere else.

Messages are built from the exception's own fields (never `str(exc)` of an unexpected error,
which can leak server paths). Bad input is always 4xx.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from engine.errors import (
    CapacityExceeded,
    Conflict,
    EngineError,
    InvalidGraph,
    InvalidTensor,
    NonFinite,
    NotFound,
    TooLarge,
)
from engine.sessions.store import StoreUnavailable
from service.responses import ProblemResponse

log = logging.getLogger("gradtape")

STATUS: dict[type[EngineError], int] = {
    InvalidGraph: 422,
    InvalidTensor: 422,
    NonFinite: 422,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    CapacityExceeded: 429,
    StoreUnavailable: 503,
}


def problem(status: int, detail: str, *, title: str | None = None, slug: str | None = None,
            errors: list[dict[str, Any]] | None = None, node: str | None = None,
            headers: dict[str, str] | None = None,
            extra: dict[str, Any] | None = None) -> ProblemResponse:
    """`extra`: the fields of a problem type's own (a `non-finite` problem's `phase` and
    counts)."""
    phrase = HTTPStatus(status).phrase
    body: dict[str, Any] = {
        "type": f"urn:gradtape:problem:{slug or phrase.lower().replace(' ', '-')}",
        "title": title or phrase,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    if node is not None:
        body["node"] = node
    body.update(extra or {})
    return ProblemResponse(body, status_code=status, headers=headers)


class ApiError(Exception):
    """An HTTP-level failure raised by the service itself (401, 413 from the body limit)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        self.status = status
        self.detail = detail
        self.headers = headers


async def engine_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, EngineError)
    status = STATUS.get(type(exc), 422)
    loc = list(exc.loc) if exc.loc[:1] in (("path",), ("query",)) else ["body", *exc.loc]
    errors = [{"loc": loc, "msg": exc.detail}] if exc.loc else None
    # raised inside a function, the detail already names the path to it (node, function, ...)
    detail = exc.detail if exc.node is None or exc.path else f"node {exc.node!r}: {exc.detail}"
    retry = getattr(exc, "retry_after", None)
    return problem(status, detail, title=exc.title, slug=exc.title.lower().replace(" ", "-"),
                   errors=errors, node=exc.node, extra=exc.extra(),
                   headers={"Retry-After": str(retry)} if retry is not None else None)


async def validation_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    for error in exc.errors():
        if error.get("type") == "json_invalid":  # not JSON at all: 400, not 422
            loc, msg = _clean(error)
            return problem(400, f"body: {msg}", title="Malformed JSON", slug="malformed-json",
                           errors=[{"loc": list(loc), "msg": msg}])
    grouped: dict[tuple[Any, ...], list[str]] = {}
    for error in exc.errors():
        loc, msg = _clean(error)
        messages = grouped.setdefault(loc, [])
        if msg not in messages:
            messages.append(msg)
    errors = [{"loc": list(loc), "msg": " or ".join(msgs)} for loc, msgs in grouped.items()]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    detail = f"{where}: {first['msg']}{more}" if where else f"{first['msg']}{more}"
    return problem(422, detail, title="Invalid request", slug="invalid-request", errors=errors)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "constrained-str"}


def _clean(error: dict[str, Any]) -> tuple[tuple[Any, ...], str]:
    """Location and message of one pydantic error, without the union-member names pydantic
    puts into locations (`target.str`, `target.list[str]`), which are not fields."""
    loc = tuple(p for p in error.get("loc", ())
                if not (isinstance(p, str) and (p in _TYPE_TAGS or "[" in p)))
    if error.get("type") == "json_invalid":
        position = f" at character {loc[-1]}" if len(loc) > 1 else ""
        reason = (error.get("ctx") or {}).get("error", "cannot parse the body")
        return ("body",), f"malformed JSON{position}: {reason}"
    return loc, str(error.get("msg", "invalid")).removeprefix("Value error, ")


async def http_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.url.path}; the API lives under /v1 (see /docs)"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request)) or headers.get("Allow", "")
        detail = f"{request.method} is not allowed on {request.url.path}; allowed: " + \
            (headers["Allow"] or "see /docs")
    slug = "too-large" if exc.status_code == 413 else None
    return problem(exc.status_code, detail, slug=slug, headers=headers or None)


def allowed_methods(request: Request) -> list[str]:
    """Every method of the request's path. Starlette's 405 names only the methods of the first
    route that matched the path, but routes of the same path with other methods match it too:
    ask the app's routes which methods they take there."""
    return [method for method in METHODS if any(
        route.matches({**request.scope, "method": method})[0] == Match.FULL
        for route in request.app.routes)]


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


async def api_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, ApiError)
    return problem(exc.status, exc.detail, headers=exc.headers)


async def unexpected_error(request: Request, exc: Exception) -> ProblemResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "internal error; the server log has the details")


Handler = Callable[[Request, Exception], Awaitable[ProblemResponse]]

# The most specific class first: `answer` takes the first that matches.
HANDLERS: tuple[tuple[type[Exception], Handler], ...] = (
    (EngineError, engine_error),
    (RequestValidationError, validation_error),
    (StarletteHTTPException, http_error),
    (ApiError, api_error),
    (Exception, unexpected_error),
)


def install(app: FastAPI) -> None:
    for cls, handler in HANDLERS:
        app.add_exception_handler(cls, handler)


async def answer(request: Request, exc: Exception) -> ProblemResponse:
    """The problem answer to `exc`, as the installed handlers give it (for code that runs
    outside FastAPI's exception middleware: the stateless fast path)."""
    for cls, handler in HANDLERS:
        if isinstance(exc, cls):
            return await handler(request, exc)
    raise exc  # a BaseException (cancellation): not an error to answer
