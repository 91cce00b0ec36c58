"""The FastAPI application: routers, CORS, telemetry, error envelope and OpenAPI at `/api/v1/docs`."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from coordinator import __version__
from coordinator.runtime import Runtime
from coordinator.telemetry.http import TelemetryMiddleware
from coordinator.web import metrics
from coordinator.web.api.v1 import (
    account,
    admin_hosts,
    api_keys,
    auth,
    batches,
    chat,
    health,
    hosts,
    island,
    jobs,
    karma,
    market,
    nats_credentials,
    stream,
    workloads,
)
from coordinator.web.errors import install_error_handlers
from coordinator.web.ratelimit import RateLimitHeaders

ROUTERS = [
    health.router,
    account.router,
    # Before the jobs router: /api/v1/jobs/batch must not match /api/v1/jobs/{id}.
    batches.router,
    workloads.router,
    api_keys.router,
    auth.router,
    jobs.router,
    stream.router,
    chat.router,
    hosts.router,
    nats_credentials.router,
    admin_hosts.router,
    island.router,
    karma.router,
    market.router,
    metrics.router,
]


class CoordinatorApp(FastAPI):
    def build_middleware_stack(self) -> ASGIApp:
        # Telemetry wraps even Starlette's ServerErrorMiddleware: a 500 is timed, carries X-Request-ID,
        # and the error handler's log line has the request id.
        return TelemetryMiddleware(super().build_middleware_stack())


def create_app(runtime: Runtime) -> FastAPI:
    app = CoordinatorApp(
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
        allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        expose_headers=[
            "Retry-After",
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
            "X-Request-ID",
        ],
    )
    app.add_middleware(RateLimitHeaders)
    for router in ROUTERS:
        app.include_router(router)
    return app
