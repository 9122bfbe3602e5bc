"""Liveness, readiness and what this instance runs on."""

from __future__ import annotations

from typing import Any, Literal

import jax
from fastapi import APIRouter
from pydantic import BaseModel

import engine
from engine.sessions.store import StoreUnavailable
from service.deps import ServicesDep
from service.responses import FastRoute
from service.schemas.service import Info

router = APIRouter(prefix="/v1", tags=["service"], route_class=FastRoute)


class Health(BaseModel):
    status: Literal["ok"] = "ok"


@router.get("/health/live", response_model=Health)
async def live() -> Health:
    """The process answers."""
    return Health()


@router.get("/health/ready", response_model=Health)
async def ready(svc: ServicesDep) -> Health:
    """The app's services are built, its lifespan has started and its session store
    answers (503 saying why when it does not)."""
    why = await svc.sessions.ready()
    if why is not None:
        raise StoreUnavailable(f"not ready: {why}")
    return Health()


@router.get("/info", response_model=None, responses={200: {"model": Info}})
async def info(svc: ServicesDep) -> dict[str, Any]:
    """Versions, the JAX backend and devices, the session store, limits and cache stats."""
    s = svc.settings
    backend = jax.default_backend()
    return {
        "version": engine.__version__,
        "jax_version": jax.__version__,
        "backend": "gpu" if backend in ("gpu", "cuda", "rocm") else backend,
        "devices": [{"id": d.id, "platform": d.platform, "kind": d.device_kind}
                    for d in jax.devices()],
        "session_store": svc.sessions.kind,
        "sessions": svc.sessions.count(),
        "limits": {
            "max_body_bytes": s.max_body_bytes,
            "max_nodes": s.max_nodes,
            "max_elements": s.max_elements,
            "max_sessions": s.max_sessions,
            "session_ttl_seconds": s.session_ttl_seconds,
            "session_max_ttl_seconds": s.session_max_ttl_seconds,
            "session_max_bytes": s.session_max_bytes,
            "total_session_bytes": s.total_session_bytes,
        },
        "compile_cache": {"capacity": svc.engine.cache.capacity,
                          "entries": len(svc.engine.cache),
                          **svc.engine.cache.stats.as_dict()},
        "registered_graphs": len(svc.registry),
        "api_keys_required": bool(s.api_key_set),
    }
