"""`GET /api/v1/workloads[/{slug}]`: the Cargo catalog."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from coordinator.accounts.service import Principal
from coordinator.web.auth import get_runtime, require_read
from coordinator.workloads import service as workloads

router = APIRouter(tags=["workloads"])


@router.get("/api/v1/workloads")
async def list_workloads(request: Request, _: Principal = Depends(require_read)) -> dict[str, Any]:
    async with get_runtime(request).db.session() as session:
        items = await workloads.list_workloads(session)
    return {"data": [workloads.public_view(w) for w in items]}


@router.get("/api/v1/workloads/{slug}")
async def get_workload(slug: str, request: Request, _: Principal = Depends(require_read)) -> dict[str, Any]:
    async with get_runtime(request).db.session() as session:
        workload = await workloads.get_by_slug(session, slug)
    return {"data": workloads.public_view(workload)}
