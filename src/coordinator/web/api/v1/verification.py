"""Verification (KYC) endpoints: the caller's status and start, the Stripe Identity webhook, and the admin
review queue (approve, reject, revoke, history)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from coordinator.accounts.service import Principal
from coordinator.errors import NotFound
from coordinator.runtime import Runtime
from coordinator.verification import rules
from coordinator.verification import service as verification
from coordinator.verification.models import Verification, VerificationEvent
from coordinator.verification.providers import StripeIdentityProvider, provider_from_settings
from coordinator.web.auth import get_runtime, require_admin, require_read, require_write
from coordinator.web.errors import error_responses

router = APIRouter(tags=["verification"])

Status = Literal["unverified", "pending", "verified", "rejected", "revoked"]


class VerificationView(BaseModel):
    """A user's status and their latest attempt (only the verified name and issuing country are kept)."""

    status: Status
    can_start: bool = Field(description="Whether `POST /api/v1/verification/start` is allowed now")
    provider: str | None = None
    provider_ref: str | None = None
    verified_name: str | None = None
    country: str | None = None
    reason: str | None = Field(None, description="Why it was rejected or revoked")
    started_at: datetime | None = None
    decided_at: datetime | None = None


class VerificationResponse(BaseModel):
    data: VerificationView


class StartedView(VerificationView):
    client_secret: str | None = Field(None, description="Stripe Identity: for the page's Stripe.js modal")
    url: str | None = Field(None, description="Stripe Identity: the hosted verification page")


class StartResponse(BaseModel):
    data: StartedView


class StartRequest(BaseModel):
    legal_name: str | None = Field(None, max_length=300, description="Built-in provider: your legal name")
    country: str | None = Field(None, max_length=2, description="Built-in provider: ISO 3166-1 alpha-2")


class DecisionRequest(BaseModel):
    reason: str | None = Field(None, max_length=2000)


class AdminVerificationView(VerificationView):
    id: int
    user_id: int
    email: str
    reviewer_id: int | None = None


class AdminVerificationResponse(BaseModel):
    data: AdminVerificationView


class QueueResponse(BaseModel):
    data: list[AdminVerificationView]


class HistoryEntry(BaseModel):
    from_status: str
    to_status: str
    actor: Literal["user", "admin", "provider"]
    actor_id: int | None
    reason: str | None
    at: datetime


class HistoryResponse(BaseModel):
    data: list[HistoryEntry]


class WebhookAnswer(BaseModel):
    event_id: str
    outcome: Literal["applied", "recorded", "stale", "duplicate", "ignored", "not_ours"]


class WebhookResponse(BaseModel):
    data: WebhookAnswer


def _view(status: str, attempt: Verification | None) -> VerificationView:
    view = VerificationView(status=status, can_start=rules.can_start(status))  # type: ignore[arg-type]
    if attempt is not None:
        view = view.model_copy(
            update={
                "provider": attempt.provider,
                "provider_ref": attempt.provider_ref,
                "verified_name": attempt.verified_name,
                "country": attempt.country,
                "reason": attempt.reason,
                "started_at": attempt.created_at,
                "decided_at": attempt.decided_at,
            }
        )
    return view


def _admin_view(attempt: Verification, email: str, status: str | None = None) -> AdminVerificationView:
    return AdminVerificationView(
        **_view(status or attempt.status, attempt).model_dump(),
        id=attempt.id,
        user_id=attempt.user_id,
        email=email,
        reviewer_id=attempt.reviewer_id,
    )


@router.get(
    "/api/v1/verification/status",
    response_model=VerificationResponse,
    responses=error_responses(401, 403, 429),
)
async def verification_status(
    request: Request, principal: Principal = Depends(require_read)
) -> VerificationResponse:
    async with get_runtime(request).db.session() as session:
        view = await verification.get_status(session, principal.user.id)
    return VerificationResponse(data=_view(view.status, view.attempt))


@router.post(
    "/api/v1/verification/start",
    response_model=StartResponse,
    status_code=201,
    responses=error_responses(401, 403, 409, 422, 429, 502),
)
async def start_verification(
    request: Request, body: StartRequest | None = None, principal: Principal = Depends(require_write)
) -> StartResponse:
    runtime = get_runtime(request)
    started = await verification.start(
        runtime.db,
        runtime.mailer,
        provider_from_settings(runtime.settings),
        principal.user.id,
        legal_name=body.legal_name if body else None,
        country=body.country if body else None,
    )
    view = _view(started.view.status, started.view.attempt).model_dump()
    return StartResponse(data=StartedView(**view, client_secret=started.client_secret, url=started.url))


def _stripe(runtime: Runtime) -> StripeIdentityProvider:
    settings = runtime.settings
    if not (settings.stripe_api_key and settings.stripe_identity_webhook_secret):
        raise NotFound("Stripe Identity is not configured")
    return StripeIdentityProvider(
        settings.stripe_api_key,
        settings.stripe_identity_webhook_secret,
        api_base=settings.stripe_api_base,
        tolerance_seconds=settings.stripe_identity_webhook_tolerance_seconds,
    )


@router.post(
    "/api/v1/verification/stripe/webhook",
    response_model=WebhookResponse,
    responses=error_responses(400, 404, 409, 502),
    summary="Stripe Identity webhook (identity.verification_session.*), signed with Stripe-Signature",
)
async def stripe_identity_webhook(request: Request) -> WebhookResponse:
    runtime = get_runtime(request)
    provider = _stripe(runtime)  # answers even while the built-in provider is selected: open Stripe attempts
    event_id, outcome = await verification.handle_stripe_webhook(
        runtime.db, runtime.mailer, provider, await request.body(), request.headers.get("stripe-signature")
    )
    return WebhookResponse(data=WebhookAnswer(event_id=event_id, outcome=outcome))  # type: ignore[arg-type]


# --- admin -----------------------------------------------------------------------------------------


@router.get(
    "/api/v1/admin/verifications",
    response_model=QueueResponse,
    tags=["admin"],
    responses=error_responses(401, 403, 422, 429),
)
async def verification_queue(
    request: Request,
    status: Literal["pending", "verified", "rejected", "revoked", "superseded"] = "pending",
    limit: int = Query(100, ge=1, le=500),
    _: Principal = Depends(require_admin),
) -> QueueResponse:
    async with get_runtime(request).db.session() as session:
        items = await verification.queue(session, status=status, limit=limit)
    return QueueResponse(data=[_admin_view(item.attempt, item.email) for item in items])


async def _decide(
    request: Request, user_id: int, move: rules.Transition, body: DecisionRequest | None, admin: Principal
) -> AdminVerificationResponse:
    runtime = get_runtime(request)
    async with runtime.db.transaction() as session:
        view = await verification.decide(
            session,
            runtime.mailer,
            user_id,
            move,
            admin_id=admin.user.id,
            reason=body.reason if body else None,
        )
        email = (await session.execute(verification.EMAIL_SQL, {"user_id": user_id})).scalar_one()
    assert view.attempt is not None
    return AdminVerificationResponse(data=_admin_view(view.attempt, email, view.status))


DECISION_ERRORS = error_responses(401, 403, 404, 409, 422, 429)


@router.post(
    "/api/v1/admin/verifications/{user_id}/approve",
    response_model=AdminVerificationResponse,
    tags=["admin"],
    responses=DECISION_ERRORS,
)
async def approve_verification(
    user_id: int,
    request: Request,
    body: DecisionRequest | None = None,
    admin: Principal = Depends(require_admin),
) -> AdminVerificationResponse:
    return await _decide(request, user_id, rules.APPROVE, body, admin)


@router.post(
    "/api/v1/admin/verifications/{user_id}/reject",
    response_model=AdminVerificationResponse,
    tags=["admin"],
    responses=DECISION_ERRORS,
)
async def reject_verification(
    user_id: int,
    request: Request,
    body: DecisionRequest | None = None,
    admin: Principal = Depends(require_admin),
) -> AdminVerificationResponse:
    return await _decide(request, user_id, rules.REJECT, body, admin)


@router.post(
    "/api/v1/admin/verifications/{user_id}/revoke",
    response_model=AdminVerificationResponse,
    tags=["admin"],
    responses=DECISION_ERRORS,
)
async def revoke_verification(
    user_id: int,
    request: Request,
    body: DecisionRequest | None = None,
    admin: Principal = Depends(require_admin),
) -> AdminVerificationResponse:
    return await _decide(request, user_id, rules.REVOKE, body, admin)


@router.get(
    "/api/v1/admin/verifications/{user_id}/history",
    response_model=HistoryResponse,
    tags=["admin"],
    responses=error_responses(401, 403, 404, 422, 429),
)
async def verification_history(
    user_id: int, request: Request, _: Principal = Depends(require_admin)
) -> HistoryResponse:
    async with get_runtime(request).db.session() as session:
        events: list[VerificationEvent] = await verification.history(session, user_id)
    return HistoryResponse(
        data=[
            HistoryEntry(
                from_status=e.from_status,
                to_status=e.to_status,
                actor=e.actor,  # type: ignore[arg-type]
                actor_id=e.actor_id,
                reason=e.reason,
                at=e.created_at,
            )
            for e in events
        ]
    )
