"""Health: `/api/v1/health` (public), `/healthz` (process alive), `/readyz` (this replica's connections)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from coordinator import __version__
from coordinator.web import schemas
from coordinator.web.auth import get_runtime
from coordinator.web.routing import ApiRouter

router = ApiRouter()


@router.get("/api/v1/health", tags=["health"], response_model=schemas.Health)
async def health() -> dict[str, Any]:
    return {"data": {"status": "ok", "version": __version__}}


@router.get("/healthz", tags=["health"], include_in_schema=False)
async def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    runtime = get_runtime(request)
    checks: dict[str, str] = {"database": "ok" if await runtime.db.ping() else "down"}
    if runtime.settings.nats_enabled:
        nc = runtime.nats
        checks["nats"] = "ok" if nc is not None and nc.is_connected else "down"
    tree = runtime.tree_ready
    if tree is not None:  # a full process tree: ready once every child started, not while stopping
        checks["started"] = "ok" if tree else "starting"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks}, 200 if ready else 503
    )
