"""The FastAPI application: routers, CORS, error envelope and OpenAPI at `/api/v1/docs`."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from coordinator import __version__
from coordinator.runtime import Runtime
from coordinator.web.api.v1 import (
    account,
    admin_hosts,
    api_keys,
    auth,
    health,
    hosts,
    island,
    jobs,
    workloads,
)
from coordinator.web.errors import install_error_handlers

ROUTERS = [
    health.router,
    account.router,
    workloads.router,
    api_keys.router,
    auth.router,
    hosts.router,
    admin_hosts.router,
    island.router,
    jobs.router,
]


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(
        title="Archipelag coordinator",
        version=__version__,
        docs_url="/api/v1/docs",
        openapi_url="/api/v1/openapi.json",
        redoc_url=None,
        redirect_slashes=False,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=runtime.settings.cors_origins,
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
        expose_headers=["Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"],
    )
    for router in ROUTERS:
        app.include_router(router)
    return app
