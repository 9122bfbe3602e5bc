"""The app factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response
from starlette.types import ASGIApp

import engine
from service import errors, openapi
from service.config import Settings
from service.fastpath import FastPath
from service.middleware import Gateway
from service.responses import FastJSONResponse
from service.routes import (
    differentiation,
    graphs,
    health,
    minimize,
    ops,
    optimizers,
    sessions,
    tapes,
)
from service.state import Services

DESCRIPTION = """\
Send a serialized computation graph; get values, gradients, Jacobians, Hessians and
Hessian-vector products, computed by JAX. Or keep GradientTape sessions on the server: watch
tensors, record ops while your client decides the control flow, and ask any tape for
gradients, including gradients of gradients through nested tapes.
"""


def in_front(app: FastAPI, gateway: Callable[[ASGIApp], ASGIApp]) -> None:
    """Put `gateway` in front of all of the app's middleware, FastAPI's error and telemetry
    layers included, each time Starlette builds the stack."""
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: gateway(build())  # type: ignore[method-assign]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    services = Services.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    app = FastAPIOffline(
        title="gradtape",
        version=engine.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=FastJSONResponse,
        static_url="/docs-assets",
        telemetry=None if settings.opentelemetry else {
            "tracing": False, "metrics": False, "logs": False},
    )
    app.state.services = services
    errors.install(app)
    for router in (health.router, ops.router, graphs.router, differentiation.router,
                   minimize.router, optimizers.router, optimizers.steps,
                   sessions.router, tapes.router):
        app.include_router(router)
    openapi.install(app, settings)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(services.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    # the routes a client calls in a loop skip the router: each module lists its own
    known = {(method, r.path): r for router in (differentiation.router, optimizers.steps,
                                                sessions.router, tapes.router)
             for r in router.routes if isinstance(r, APIRoute) for method in r.methods or ()}
    lean = [*differentiation.LEAN, *optimizers.LEAN, *sessions.LEAN, *tapes.LEAN]
    fast = FastPath(services, [(entry, known[entry.method, entry.path]) for entry in lean])
    in_front(app, lambda stack: Gateway(stack, settings, services.metrics, fast))
    logging.getLogger("gradtape").setLevel(settings.log_level.upper())
    return app
