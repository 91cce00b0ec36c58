"""`GET /api/v1/workloads[/{slug}]`: the Cargo catalog."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request

from coordinator.accounts.service import Principal
from coordinator.web import schemas
from coordinator.web.auth import get_runtime, require_read
from coordinator.web.errors import error_responses
from coordinator.web.routing import ApiRouter
from coordinator.workloads import service as workloads

router = ApiRouter(tags=["workloads"])


@router.get(
    "/api/v1/workloads", response_model=schemas.WorkloadList, responses=error_responses(401, 403, 429)
)
async def list_workloads(request: Request, _: Principal = Depends(require_read)) -> dict[str, Any]:
    async with get_runtime(request).db.session() as session:
        items = await workloads.list_workloads(session)
    return {"data": [workloads.public_view(w) for w in items]}


@router.get(
    "/api/v1/workloads/{slug}",
    response_model=schemas.WorkloadResponse,
    responses=error_responses(401, 403, 404, 429),
)
async def get_workload(slug: str, request: Request, _: Principal = Depends(require_read)) -> dict[str, Any]:
    async with get_runtime(request).db.session() as session:
        workload = await workloads.get_by_slug(session, slug)
    return {"data": workloads.public_view(workload)}
