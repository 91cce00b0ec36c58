"""The FastAPI application: routers, CORS, telemetry, error envelope and OpenAPI at `/api/v1/docs`."""

from __future__ import annotations

import swagger_ui_bundle  # type: ignore[import-untyped]
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp

from coordinator import __version__
from coordinator.runtime import Runtime
from coordinator.telemetry.http import TelemetryMiddleware
from coordinator.web import metrics
from coordinator.web.api.v1 import (
    account,
    admin_hosts,
    admin_marketplace,
    api_keys,
    auth,
    batches,
    chat,
    devices,
    health,
    hosts,
    island,
    jobs,
    karma,
    market,
    marketplace,
    nats_credentials,
    network,
    stream,
    verification,
    workloads,
)
from coordinator.web.bodylimit import BodyLimit
from coordinator.web.channels import endpoint as channels_endpoint
from coordinator.web.errors import install_envelope_openapi, install_error_handlers
from coordinator.web.pages import install_pages
from coordinator.web.ratelimit import RateLimitHeaders

# In the order a request is matched: the hot paths first (each router a request passes costs it a scan of
# that router's routes), then the rest; no route may shadow another
# (`test_openapi_contract.test_every_api_route_is_reached_by_its_own_paths`).
ROUTERS = [
    health.router,
    # Before the jobs router: /api/v1/jobs/batch must not match /api/v1/jobs/{id}.
    batches.router,
    jobs.router,
    stream.router,
    chat.router,
    account.router,
    workloads.router,
    api_keys.router,
    auth.router,
    hosts.router,
    nats_credentials.router,
    admin_hosts.router,
    island.router,
    karma.router,
    market.router,
    verification.router,
    network.router,
    marketplace.router,
    admin_marketplace.router,
    metrics.router,
    devices.router,
    channels_endpoint.router,
]


# Request headers the official clients send, so that a browser's preflight listing them is answered: the
# TypeScript SDK sets User-Agent (Firefox then lists it), its stream adds Accept; httpx-sse sends
# Cache-Control. X-Request-ID is ours (correlation ids).
CLIENT_HEADERS = ["Authorization", "Content-Type", "Accept", "User-Agent", "Cache-Control", "X-Request-ID"]


class CoordinatorApp(FastAPI):
    def build_middleware_stack(self) -> ASGIApp:
        # Telemetry wraps even Starlette's ServerErrorMiddleware: a 500 is timed, carries X-Request-ID,
        # and the error handler's log line has the request id.
        return TelemetryMiddleware(super().build_middleware_stack())


def create_app(runtime: Runtime) -> FastAPI:
    app = CoordinatorApp(
        title="Archipelag coordinator",
        version=__version__,
        docs_url=None,  # served below from the package's own Swagger UI assets
        openapi_url="/api/v1/openapi.json",
        redoc_url=None,
        redirect_slashes=False,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    # Added first, so inside CORS (a browser can read the 413) and before auth or any route runs.
    app.add_middleware(BodyLimit, max_bytes=runtime.settings.max_request_bytes)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=runtime.settings.cors_origins,
        allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
        allow_headers=CLIENT_HEADERS,
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
    install_offline_docs(app)
    install_envelope_openapi(app)
    install_pages(app)
    return app


DOCS_ASSETS = "/api/v1/docs/assets"


def install_offline_docs(app: FastAPI) -> None:
    """`/api/v1/docs`: Swagger UI loaded from this server (the `swagger-ui-bundle-v2` wheel's files), so
    the page works on a machine without internet."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/api/v1/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/api/v1/openapi.json",
            title=f"{app.title} — API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )
