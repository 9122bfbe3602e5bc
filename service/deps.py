"""Dependencies for route handlers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.idempotency import idempotency_key
from service.state import Services

# async: FastAPI runs plain `def` dependencies in the thread pool, a hop per request


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def body_bytes(request: Request) -> int:
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() else 1 << 62


ServicesDep = Annotated[Services, Depends(get_services)]
BodyBytes = Annotated[int, Depends(body_bytes)]
IdempotencyDep = Depends(idempotency_key)
