"""Operator endpoints of the registry: the review queue, approve/reject/request changes, trust levels,
suspension, publisher tiers (`require_admin`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from coordinator.accounts.service import Principal
from coordinator.marketplace import catalogue, publishers, registry
from coordinator.web.api.v1.marketplace_schemas import (
    AdminPublisherIn,
    ApproveIn,
    CargoAnswer,
    CargoOut,
    PublisherAnswer,
    ReasonIn,
    SubmissionAnswer,
    SubmissionList,
    SubmissionOut,
    TrustIn,
    publisher_out,
)
from coordinator.web.auth import get_runtime, require_admin
from coordinator.web.errors import error_responses
from coordinator.workers.app import defer_scan

router = APIRouter(tags=["admin"])


@router.get(
    "/api/v1/admin/marketplace/queue", response_model=SubmissionList, responses=error_responses(401, 403, 429)
)
async def review_queue(request: Request, _: Principal = Depends(require_admin)) -> SubmissionList:
    async with get_runtime(request).db.session() as session:
        items = await registry.review_queue(session)
        out = []
        for submission in items:
            scans = await registry.latest_scans(session, submission_id=submission.id)
            out.append(SubmissionOut.of(submission, registry.scan_summary(scans) if scans else None))
    return SubmissionList(data=out)


@router.post(
    "/api/v1/admin/marketplace/submissions/{submission_id}/approve",
    response_model=SubmissionAnswer,
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
async def approve(
    submission_id: int,
    request: Request,
    body: ApproveIn | None = None,
    admin: Principal = Depends(require_admin),
) -> SubmissionAnswer:
    body = body or ApproveIn()
    async with get_runtime(request).db.transaction() as session:
        submission, _ = await registry.approve(
            session, admin.user, submission_id, body.trust_level, body.notes
        )
        events = await registry.history(session, submission_id)
        return SubmissionAnswer(data=SubmissionOut.of(submission, history=events))


@router.post(
    "/api/v1/admin/marketplace/submissions/{submission_id}/reject",
    response_model=SubmissionAnswer,
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
async def reject(
    submission_id: int, body: ReasonIn, request: Request, admin: Principal = Depends(require_admin)
) -> SubmissionAnswer:
    async with get_runtime(request).db.transaction() as session:
        submission = await registry.reject(session, admin.user, submission_id, body.reason)
        return SubmissionAnswer(data=SubmissionOut.of(submission))


@router.post(
    "/api/v1/admin/marketplace/submissions/{submission_id}/request-changes",
    response_model=SubmissionAnswer,
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
async def request_changes(
    submission_id: int, body: ReasonIn, request: Request, admin: Principal = Depends(require_admin)
) -> SubmissionAnswer:
    async with get_runtime(request).db.transaction() as session:
        submission = await registry.request_changes(session, admin.user, submission_id, body.reason)
        return SubmissionAnswer(data=SubmissionOut.of(submission))


@router.put(
    "/api/v1/admin/marketplace/{slug}/trust-level",
    response_model=CargoAnswer,
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
async def set_trust_level(
    slug: str, body: TrustIn, request: Request, _: Principal = Depends(require_admin)
) -> CargoAnswer:
    async with get_runtime(request).db.transaction() as session:
        workload = await registry.set_trust_level(session, slug, body.trust_level)
        return CargoAnswer(data=CargoOut.of(workload))


@router.post(
    "/api/v1/admin/marketplace/{slug}/suspend",
    response_model=CargoAnswer,
    responses=error_responses(401, 403, 404, 422, 429),
)
async def suspend(
    slug: str, body: ReasonIn, request: Request, _: Principal = Depends(require_admin)
) -> CargoAnswer:
    async with get_runtime(request).db.transaction() as session:
        workload = await registry.suspend(session, slug, body.reason)
        return CargoAnswer(data=CargoOut.of(workload))


@router.post(
    "/api/v1/admin/marketplace/{slug}/unsuspend",
    response_model=CargoAnswer,
    responses=error_responses(401, 403, 404, 429),
)
async def unsuspend(slug: str, request: Request, _: Principal = Depends(require_admin)) -> CargoAnswer:
    async with get_runtime(request).db.transaction() as session:
        workload = await registry.unsuspend(session, slug)
        return CargoAnswer(data=CargoOut.of(workload))


@router.post(
    "/api/v1/admin/marketplace/{slug}/rescan",
    status_code=202,
    response_model=CargoAnswer,
    responses=error_responses(401, 403, 404, 429),
)
async def rescan(slug: str, request: Request, _: Principal = Depends(require_admin)) -> CargoAnswer:
    runtime = get_runtime(request)
    async with runtime.db.session() as session:
        workload = await catalogue.cargo_detail(session, slug)
    await defer_scan(runtime, workload_id=workload["workload"].id)
    return CargoAnswer(data=CargoOut.of(workload["workload"]))


@router.put(
    "/api/v1/admin/marketplace/publishers/{user_id}",
    response_model=PublisherAnswer,
    responses=error_responses(401, 403, 404, 422, 429),
)
async def set_publisher(
    user_id: int, body: AdminPublisherIn, request: Request, _: Principal = Depends(require_admin)
) -> PublisherAnswer:
    async with get_runtime(request).db.transaction() as session:
        publisher = await publishers.update_publisher(
            session,
            user_id,
            tier=body.tier,
            signing_public_key=body.signing_public_key,
            cargo_limit=body.cargo_limit,
            by_admin=True,
        )
        return PublisherAnswer(data=publisher_out(publisher))
