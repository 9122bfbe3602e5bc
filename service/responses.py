"""JSON responses rendered by orjson, which writes NumPy arrays natively."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, option=_OPTIONS)


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return dumps(content)


class ProblemResponse(FastJSONResponse):
    media_type = "application/problem+json"


class _OrjsonRequest(Request):
    async def json(self) -> Any:
        # orjson's JSONDecodeError subclasses json's, so FastAPI reports it as malformed JSON
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


class FastRoute(APIRoute):
    """A route whose JSON body is parsed by orjson (several times faster than `json`)."""

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def route(request: Request) -> Any:
            return await handler(_OrjsonRequest(request.scope, request.receive))

        return route
