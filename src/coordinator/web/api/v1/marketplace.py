"""The Cargo registry for consumers and publishers: the catalogue, categories, reviews, submissions."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from coordinator.accounts.service import Principal
from coordinator.marketplace import catalogue, publishers, registry, reputation
from coordinator.web.api.v1.marketplace_schemas import (
    CargoDetailAnswer,
    CargoDetailOut,
    CargoList,
    CargoOut,
    CategoryList,
    CategoryOut,
    PublisherAnswer,
    PublisherIn,
    ReviewAnswer,
    ReviewIn,
    ReviewList,
    ReviewOut,
    SubmissionAnswer,
    SubmissionCreate,
    SubmissionList,
    SubmissionOut,
    SubmissionUpdate,
    VersionOut,
    publisher_out,
)
from coordinator.web.auth import get_runtime, require_read, require_write
from coordinator.web.errors import error_responses
from coordinator.workers.app import defer_scan

router = APIRouter(tags=["marketplace"])


@router.get("/api/v1/marketplace", response_model=CargoList, responses=error_responses(401, 403, 429))
async def list_catalogue(
    request: Request,
    category: str | None = None,
    q: str | None = None,
    _: Principal = Depends(require_read),
) -> CargoList:
    async with get_runtime(request).db.session() as session:
        items = await catalogue.catalogue(session, category=category, q=q)
    return CargoList(data=[CargoOut.of(w) for w in items])


@router.get(
    "/api/v1/marketplace/categories", response_model=CategoryList, responses=error_responses(401, 403, 429)
)
async def list_categories(request: Request, _: Principal = Depends(require_read)) -> CategoryList:
    async with get_runtime(request).db.session() as session:
        counts = await catalogue.categories(session)
    return CategoryList(data=[CategoryOut(name=name, count=count) for name, count in counts])


@router.get(
    "/api/v1/marketplace/publisher", response_model=PublisherAnswer, responses=error_responses(401, 403, 429)
)
async def get_publisher(request: Request, principal: Principal = Depends(require_read)) -> PublisherAnswer:
    async with get_runtime(request).db.transaction() as session:
        publisher = await publishers.publisher_of(session, principal.user.id)
        return PublisherAnswer(data=publisher_out(publisher))


@router.put(
    "/api/v1/marketplace/publisher",
    response_model=PublisherAnswer,
    responses=error_responses(401, 403, 422, 429),
)
async def update_publisher(
    body: PublisherIn, request: Request, principal: Principal = Depends(require_write)
) -> PublisherAnswer:
    async with get_runtime(request).db.transaction() as session:
        publisher = await publishers.update_publisher(
            session, principal.user.id, tier=body.tier, signing_public_key=body.signing_public_key
        )
        return PublisherAnswer(data=publisher_out(publisher))


@router.get(
    "/api/v1/marketplace/submissions", response_model=SubmissionList, responses=error_responses(401, 403, 429)
)
async def my_submissions(request: Request, principal: Principal = Depends(require_read)) -> SubmissionList:
    from sqlalchemy import select

    from coordinator.workloads.models import WorkloadSubmission

    async with get_runtime(request).db.session() as session:
        query = select(WorkloadSubmission).where(WorkloadSubmission.publisher_id == principal.user.id)
        items = (await session.execute(query.order_by(WorkloadSubmission.id.desc()))).scalars()
        return SubmissionList(data=[SubmissionOut.of(s) for s in items])


@router.post(
    "/api/v1/marketplace/submissions",
    status_code=201,
    response_model=SubmissionAnswer,
    responses=error_responses(401, 403, 409, 422, 429),
)
async def create_submission(
    body: SubmissionCreate, request: Request, principal: Principal = Depends(require_write)
) -> SubmissionAnswer:
    async with get_runtime(request).db.transaction() as session:
        submission = await registry.create_submission(
            session, principal.user, body.slug, body.name, body.version, body.spec()
        )
        events = await registry.history(session, submission.id)
        return SubmissionAnswer(data=SubmissionOut.of(submission, history=events))


@router.get(
    "/api/v1/marketplace/submissions/{submission_id}",
    response_model=SubmissionAnswer,
    responses=error_responses(401, 403, 404, 429),
)
async def get_submission(
    submission_id: int, request: Request, principal: Principal = Depends(require_read)
) -> SubmissionAnswer:
    async with get_runtime(request).db.session() as session:
        submission = await registry.get_submission(session, principal.user, submission_id)
        scans = await registry.latest_scans(session, submission_id=submission_id)
        events = await registry.history(session, submission_id)
        scan = registry.scan_summary(scans) if scans else None
        return SubmissionAnswer(data=SubmissionOut.of(submission, scan, events))


@router.put(
    "/api/v1/marketplace/submissions/{submission_id}",
    response_model=SubmissionAnswer,
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
async def update_submission(
    submission_id: int,
    body: SubmissionUpdate,
    request: Request,
    principal: Principal = Depends(require_write),
) -> SubmissionAnswer:
    changes = body.model_dump(exclude_unset=True)
    async with get_runtime(request).db.transaction() as session:
        submission = await registry.update_submission(session, principal.user, submission_id, changes)
        return SubmissionAnswer(data=SubmissionOut.of(submission))


@router.post(
    "/api/v1/marketplace/submissions/{submission_id}/submit",
    response_model=SubmissionAnswer,
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
async def submit_submission(
    submission_id: int, request: Request, principal: Principal = Depends(require_write)
) -> SubmissionAnswer:
    runtime = get_runtime(request)
    async with runtime.db.transaction() as session:
        submission = await registry.submit(session, principal.user, submission_id)
        answer = SubmissionAnswer(data=SubmissionOut.of(submission))
    await defer_scan(runtime, submission_id=submission_id)  # after the commit: the scan sees `submitted`
    return answer


@router.get(
    "/api/v1/marketplace/{slug}",
    response_model=CargoDetailAnswer,
    responses=error_responses(401, 403, 404, 429),
)
async def get_cargo(slug: str, request: Request, _: Principal = Depends(require_read)) -> CargoDetailAnswer:
    async with get_runtime(request).db.session() as session:
        detail = await catalogue.cargo_detail(session, slug)
    base = CargoOut.of(detail["workload"]).model_dump()
    return CargoDetailAnswer(
        data=CargoDetailOut(
            **base,
            versions=[VersionOut(**v) for v in detail["versions"]],
            rating=detail["rating"],
            reviews=detail["reviews"],
            scan=detail["scan"],
        )
    )


@router.get(
    "/api/v1/marketplace/{slug}/reviews",
    response_model=ReviewList,
    responses=error_responses(401, 403, 404, 429),
)
async def list_reviews(slug: str, request: Request, _: Principal = Depends(require_read)) -> ReviewList:
    async with get_runtime(request).db.session() as session:
        items = await catalogue.reviews_of(session, slug)
    return ReviewList(data=[ReviewOut.of(r) for r in items])


@router.post(
    "/api/v1/marketplace/{slug}/reviews",
    status_code=201,
    response_model=ReviewAnswer,
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
async def add_review(
    slug: str, body: ReviewIn, request: Request, principal: Principal = Depends(require_write)
) -> ReviewAnswer:
    async with get_runtime(request).db.transaction() as session:
        review, events = await catalogue.add_review(
            session, principal.user, slug, body.rating, body.comment, body.complaint
        )
        for event in events:
            await reputation.record_event(session, review.workload_id, event)
        return ReviewAnswer(data=ReviewOut.of(review))
