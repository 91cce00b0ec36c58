"""Operator endpoints for Islands: list, approve, suspend, resume (`require_admin`)."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request
from pydantic import BaseModel, Field

from coordinator.accounts.service import Principal
from coordinator.hosts import service as hosts
from coordinator.hosts.models import Host
from coordinator.web import schemas
from coordinator.web.auth import get_runtime, require_admin
from coordinator.web.errors import error_responses
from coordinator.web.fleet_events import fleet_changed
from coordinator.web.routing import ApiRouter

router = ApiRouter(tags=["admin"])


class SuspendRequest(BaseModel):
    reason: str | None = Field(None, max_length=2000)


async def _answer(request: Request, host: Host) -> dict[str, Any]:
    runtime = get_runtime(request)
    hosts.sync_view(runtime.fleet, host)
    await fleet_changed(runtime)
    return {"data": hosts.public_view(host, is_admin=True)}


@router.get("/api/v1/admin/hosts", response_model=schemas.HostList, responses=error_responses(401, 403, 429))
async def admin_list_hosts(
    request: Request, status: str | None = None, _: Principal = Depends(require_admin)
) -> dict[str, Any]:
    async with get_runtime(request).db.session() as session:
        items = await hosts.list_hosts(session, status=status)
    return {"data": [hosts.public_view(h, is_admin=True) for h in items]}


@router.post(
    "/api/v1/admin/hosts/{host_id}/approve",
    response_model=schemas.HostResponse,
    responses=error_responses(401, 403, 404, 422, 429),
)
async def approve_host(
    host_id: str, request: Request, _: Principal = Depends(require_admin)
) -> dict[str, Any]:
    async with get_runtime(request).db.transaction() as session:
        host = await hosts.set_approved(session, host_id)
    return await _answer(request, host)


@router.post(
    "/api/v1/admin/hosts/{host_id}/suspend",
    response_model=schemas.HostResponse,
    responses=error_responses(401, 403, 404, 422, 429),
)
async def suspend_host(
    host_id: str, request: Request, body: SuspendRequest | None = None, _: Principal = Depends(require_admin)
) -> dict[str, Any]:
    async with get_runtime(request).db.transaction() as session:
        host = await hosts.suspend(session, host_id, body.reason if body else None)
    return await _answer(request, host)


@router.post(
    "/api/v1/admin/hosts/{host_id}/resume",
    response_model=schemas.HostResponse,
    responses=error_responses(401, 403, 404, 422, 429),
)
async def resume_host(
    host_id: str, request: Request, _: Principal = Depends(require_admin)
) -> dict[str, Any]:
    async with get_runtime(request).db.transaction() as session:
        host = await hosts.resume(session, host_id)
    return await _answer(request, host)
