"""`GET /api/v1/hosts[/{id}]` (the cli's "Islands online") and `POST /api/v1/hosts/pair` (claim a code).

Any read key sees the online, approved Islands; owners and admins also see their others and the
owner-only details (approval, prices, earnings)."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request
from pydantic import BaseModel, Field

from coordinator.accounts.service import Principal
from coordinator.errors import NotFound
from coordinator.hosts import pairing, rules
from coordinator.hosts import service as hosts
from coordinator.web import schemas
from coordinator.web.auth import get_runtime, require_read, require_write
from coordinator.web.errors import error_responses
from coordinator.web.routing import ApiRouter

router = ApiRouter(tags=["hosts"])


class PairRequest(BaseModel):
    code: str = Field(min_length=1, max_length=32)


@router.get("/api/v1/hosts", response_model=schemas.HostList, responses=error_responses(401, 403, 429))
async def list_hosts(request: Request, principal: Principal = Depends(require_read)) -> dict[str, Any]:
    async with get_runtime(request).db.session() as session:
        items = await hosts.list_visible_hosts(session, principal.user.id, principal.is_admin)
    return {
        "data": [
            hosts.public_view(h, viewer_id=principal.user.id, is_admin=principal.is_admin) for h in items
        ]
    }


@router.get(
    "/api/v1/hosts/{host_id}",
    response_model=schemas.HostResponse,
    responses=error_responses(401, 403, 404, 429),
)
async def get_host(
    host_id: str, request: Request, principal: Principal = Depends(require_read)
) -> dict[str, Any]:
    async with get_runtime(request).db.session() as session:
        host = await hosts.get_host(session, host_id)
    if not rules.visible_to(host.status, host.approved, host.owner_id, principal.user.id, principal.is_admin):
        raise NotFound("Island not found")
    return {"data": hosts.public_view(host, viewer_id=principal.user.id, is_admin=principal.is_admin)}


@router.post(
    "/api/v1/hosts/pair",
    response_model=schemas.HostResponse,
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
async def pair_host(
    body: PairRequest, request: Request, principal: Principal = Depends(require_write)
) -> dict[str, Any]:
    runtime = get_runtime(request)
    async with runtime.db.transaction() as session:
        host = await pairing.claim_pairing_code(session, body.code, principal.user.id)
    hosts.sync_view(runtime.fleet, host)
    return {"data": hosts.public_view(host, viewer_id=principal.user.id, is_admin=principal.is_admin)}
