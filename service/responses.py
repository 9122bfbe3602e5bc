"""JSON responses rendered by orjson, which writes NumPy arrays natively."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from service import bodies

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, option=_OPTIONS)


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return dumps(content)

    def init_headers(self, headers: Mapping[str, str] | None = None) -> None:
        """Starlette's headers of a JSON answer with a body, written out directly (its general
        path costs microseconds an answer); anything else goes to Starlette."""
        if headers is None and type(self).media_type == "application/json" and \
                self.status_code >= 200 and self.status_code not in (204, 304):
            self.raw_headers = [(b"content-length", str(len(self.body)).encode("latin-1")),
                                (b"content-type", b"application/json")]
            return
        super().init_headers(headers)


class ProblemResponse(FastJSONResponse):
    media_type = "application/problem+json"


class _OrjsonRequest(Request):
    async def json(self) -> Any:
        # orjson's JSONDecodeError subclasses json's, so FastAPI reports it as malformed JSON
        if not hasattr(self, "_json"):
            self._json = bodies.parse(self.scope, await self.body())
        return self._json


class FastRoute(APIRoute):
    """A route whose JSON body is parsed by orjson (several times faster than `json`), and
    that answers 415 to a body of another media type. A route that takes other media types
    lists them in `openapi_extra["requestBody"]["content"]`."""

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()
        declared = ((self.openapi_extra or {}).get("requestBody") or {}).get("content") or {}
        media_types = {"application/json", *declared} if self.body_field or declared else None

        async def route(request: Request) -> Any:
            scope = request.scope
            binary = media_types is not None and \
                bodies.binary_header_length(scope) is not None
            if binary:  # a JSON header with binary tensors: parsed as JSON is (bodies.parse)
                scope = {**scope, "headers": [(k, v) for k, v in scope["headers"]
                                              if k != b"content-type"]
                         + [(b"content-type", b"application/json")]}
            request = _OrjsonRequest(scope, request.receive)
            if media_types is not None and not binary:
                given = request.headers.get("content-type", "")
                if not _accepted(given, media_types) and await request.body():
                    sent = given.split(";", 1)[0].strip()[:100] or "a body without Content-Type"
                    takes = " or ".join(sorted(media_types))
                    raise HTTPException(415, f"this route takes {takes}, not {sent}")
            return await handler(request)

        return route


def _accepted(content_type: str, media_types: set[str]) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type in media_types or (
        media_type.startswith("application/") and media_type.endswith("+json"))
