"""`POST /api/v1/jobs/batch` and `GET /api/v1/jobs/{id}/batch-status` (client-api §6), no envelope."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from coordinator.accounts.service import Principal
from coordinator.errors import ValidationFailed
from coordinator.jobs import batches
from coordinator.jobs import rules as job_rules
from coordinator.jobs.batch_rules import MAX_INPUTS, BatchSpec
from coordinator.web import schemas
from coordinator.web.auth import get_runtime, require_read, require_write
from coordinator.web.errors import error_responses
from coordinator.web.routing import ApiRouter

router = ApiRouter(tags=["batches"])


class SubmitBatch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    workload: str = Field(min_length=1, max_length=100)
    inputs: list[Any] = Field(min_length=1, max_length=MAX_INPUTS)
    merge_strategy: Literal["concat", "flatten"] = "concat"
    fail_mode: Literal["best_effort", "fail_fast"] = "best_effort"
    max_parallelism: int | None = Field(None, ge=1, le=MAX_INPUTS)
    region: str | None = Field(None, min_length=1, max_length=50)
    # Both SDKs send it as a string (per child); a number is accepted too.
    bid_price: str | float | None = None


@router.post(
    "/api/v1/jobs/batch",
    status_code=201,
    response_model=schemas.BatchJob,
    responses=error_responses(401, 402, 403, 404, 422, 429),
)
async def submit_batch(
    body: SubmitBatch, request: Request, principal: Principal = Depends(require_write)
) -> Any:
    runtime = get_runtime(request)
    budget = None
    if body.bid_price is not None:
        budget = job_rules.parse_budget(body.bid_price)
        if budget is None:
            raise ValidationFailed("Invalid input", {"bid_price": ["must be a positive amount of credits"]})
    spec = BatchSpec(
        workload=body.workload,
        inputs=body.inputs,
        merge_strategy=body.merge_strategy,
        fail_mode=body.fail_mode,
        max_parallelism=body.max_parallelism,
        region=body.region,
        budget=budget,
    )
    parent_id = await batches.submit_batch(runtime, principal.user, spec)
    async with runtime.db.session() as session:
        job, slug, children = await batches.load_batch(session, principal.user, str(parent_id))
    view = batches.batch_job_view(job, slug, children)
    return JSONResponse({**view, "data": view}, status_code=201)


@router.get(
    "/api/v1/jobs/{job_id}/batch-status",
    response_model=schemas.BatchProgress,
    responses=error_responses(401, 403, 404, 429),
)
async def batch_status(job_id: str, request: Request, principal: Principal = Depends(require_read)) -> Any:
    async with get_runtime(request).db.session() as session:
        job, _, children = await batches.load_batch(session, principal.user, job_id)
    return batches.batch_progress_view(job, children)
