"""`/api/v1/jobs`: submit, list, get, cancel and output of the caller's jobs."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fastapi import Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.accounts.service import Principal
from coordinator.jobs import batches
from coordinator.jobs import service as jobs
from coordinator.jobs.models import Job
from coordinator.jobs.views import public_job
from coordinator.web import schemas
from coordinator.web.auth import get_runtime, require_read, require_write
from coordinator.web.errors import error_responses
from coordinator.web.routing import ApiRouter

router = ApiRouter(tags=["jobs"])


class SubmitJob(BaseModel):
    model_config = ConfigDict(extra="ignore")

    workload: str = Field(min_length=1, max_length=100)
    # Any JSON value: a non-object input is refused by the Cargo check with a field map.
    input: Any
    priority: int = 0
    budget: float | str | None = None
    region: str | None = None


async def batch_credits(session: AsyncSession, job: Job) -> Decimal | None:
    """A batch parent costs what its children cost; None for an ordinary job (its own charge)."""
    return None if job.batch_config is None else await batches.children_credits(session, job.id)


@router.post(
    "/api/v1/jobs",
    status_code=201,
    response_model=schemas.JobResponse,
    responses=error_responses(401, 402, 403, 404, 422, 429),
)
async def submit(body: SubmitJob, request: Request, principal: Principal = Depends(require_write)) -> Any:
    submitted = await jobs.submit(
        get_runtime(request),
        principal.user,
        body.workload,
        body.input,
        priority=body.priority,
        budget=body.budget,
        region=body.region,
    )
    body_out = public_job(submitted.job, body.workload, queue_position=submitted.queue_position)
    return JSONResponse({"data": body_out}, status_code=201)


@router.get("/api/v1/jobs", response_model=schemas.JobList, responses=error_responses(401, 403, 422, 429))
async def list_jobs(
    request: Request,
    limit: int = Query(20, ge=1, le=100),
    offset: int = Query(0, ge=0),
    principal: Principal = Depends(require_read),
) -> dict[str, Any]:
    async with get_runtime(request).db.read() as session:
        rows, total = await jobs.list_jobs(session, principal.user, limit=limit, offset=offset)
        data = [
            public_job(
                job,
                slug,
                queue_position=await jobs.queue_position(session, job),
                credits=await batch_credits(session, job),
            )
            for job, slug in rows
        ]
    return {"data": data, "meta": {"total": total, "limit": limit, "offset": offset}}


@router.get(
    "/api/v1/jobs/{job_id}", response_model=schemas.JobResponse, responses=error_responses(401, 403, 404, 429)
)
async def get_job(
    job_id: str, request: Request, principal: Principal = Depends(require_read)
) -> dict[str, Any]:
    async with get_runtime(request).db.read() as session:
        job, slug = await jobs.get_job(session, principal.user, job_id)
        position = await jobs.queue_position(session, job)
        credits = await batch_credits(session, job)
    return {"data": public_job(job, slug, queue_position=position, credits=credits)}


@router.delete(
    "/api/v1/jobs/{job_id}", response_model=schemas.JobResponse, responses=error_responses(401, 403, 404, 429)
)
async def cancel_job(
    job_id: str, request: Request, principal: Principal = Depends(require_write)
) -> dict[str, Any]:
    job, slug = await jobs.cancel_job(get_runtime(request), principal.user, job_id)
    async with get_runtime(request).db.read() as session:
        credits = await batch_credits(session, job)
    return {"data": public_job(job, slug, credits=credits)}


@router.get(
    "/api/v1/jobs/{job_id}/output",
    response_model=schemas.JobOutputResponse,
    responses=error_responses(401, 403, 404, 429),
)
async def job_output(
    job_id: str, request: Request, principal: Principal = Depends(require_read)
) -> dict[str, Any]:
    async with get_runtime(request).db.read() as session:
        job, _ = await jobs.get_job(session, principal.user, job_id)
    view = public_job(job, "")
    return {"data": {"id": view["id"], "status": view["status"], "output": job.output, "error": job.error}}
