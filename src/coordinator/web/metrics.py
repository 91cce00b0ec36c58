"""`GET /metrics`: the Prometheus scrape. Open in development and test; in production it takes the
metrics token (`COORDINATOR_METRICS_TOKEN`) as a Bearer token, or an admin API key or session."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response

from coordinator.errors import Forbidden, Unauthorized
from coordinator.runtime import Runtime
from coordinator.telemetry import exposition
from coordinator.web.auth import current_principal, get_runtime

router = APIRouter()


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def authorize_scrape(request: Request, runtime: Runtime) -> None:
    if runtime.settings.is_dev:
        return
    expected = runtime.settings.metrics_token
    token = _bearer(request)
    if expected and token and hmac.compare_digest(token.encode(), expected.encode()):
        return
    principal = await current_principal(request)
    if principal is None:
        raise Unauthorized("Metrics require the metrics token or an admin API key")
    if not principal.is_admin:
        raise Forbidden("Admin role required")


@router.get("/metrics", include_in_schema=False)
async def scrape(request: Request) -> Response:
    runtime = get_runtime(request)
    await authorize_scrape(request, runtime)
    body, content_type = exposition.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)
