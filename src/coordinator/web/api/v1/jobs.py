"""`/api/v1/jobs`: submit, list, get, cancel and output of the caller's jobs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from coordinator.accounts.service import Principal
from coordinator.jobs import service as jobs
from coordinator.jobs.views import public_job
from coordinator.web.auth import get_runtime, require_read, require_write

router = APIRouter(tags=["jobs"])


class SubmitJob(BaseModel):
    model_config = ConfigDict(extra="ignore")

    workload: str = Field(min_length=1, max_length=100)
    # Any JSON value: a non-object input is refused by the Cargo check with a field map.
    input: Any
    priority: int = 0
    budget: float | str | None = None
    region: str | None = None


@router.post("/api/v1/jobs", status_code=201, responses={402: {}, 404: {}, 422: {}})
async def submit(body: SubmitJob, request: Request, principal: Principal = Depends(require_write)) -> Any:
    job = await jobs.submit_job(
        get_runtime(request),
        principal.user,
        body.workload,
        body.input,
        priority=body.priority,
        budget=body.budget,
        region=body.region,
    )
    async with get_runtime(request).db.read() as session:
        position = await jobs.queue_position(session, job)
    return JSONResponse({"data": public_job(job, body.workload, queue_position=position)}, status_code=201)


@router.get("/api/v1/jobs")
async def list_jobs(
    request: Request,
    limit: int = Query(20, ge=1, le=100),
    offset: int = Query(0, ge=0),
    principal: Principal = Depends(require_read),
) -> dict[str, Any]:
    async with get_runtime(request).db.read() as session:
        rows, total = await jobs.list_jobs(session, principal.user, limit=limit, offset=offset)
        data = [
            public_job(job, slug, queue_position=await jobs.queue_position(session, job))
            for job, slug in rows
        ]
    return {"data": data, "meta": {"total": total, "limit": limit, "offset": offset}}


@router.get("/api/v1/jobs/{job_id}")
async def get_job(
    job_id: str, request: Request, principal: Principal = Depends(require_read)
) -> dict[str, Any]:
    async with get_runtime(request).db.read() as session:
        job, slug = await jobs.get_job(session, principal.user, job_id)
        position = await jobs.queue_position(session, job)
    return {"data": public_job(job, slug, queue_position=position)}


@router.delete("/api/v1/jobs/{job_id}")
async def cancel_job(
    job_id: str, request: Request, principal: Principal = Depends(require_write)
) -> dict[str, Any]:
    job, slug = await jobs.cancel_job(get_runtime(request), principal.user, job_id)
    return {"data": public_job(job, slug)}


@router.get("/api/v1/jobs/{job_id}/output")
async def job_output(
    job_id: str, request: Request, principal: Principal = Depends(require_read)
) -> dict[str, Any]:
    async with get_runtime(request).db.read() as session:
        job, _ = await jobs.get_job(session, principal.user, job_id)
    view = public_job(job, "")
    return {"data": {"id": view["id"], "status": view["status"], "output": job.output, "error": job.error}}
