"""Verification service: start a check, apply the provider's or an admin's decision, and answer the gates.

A user's current status lives in one column, `users.verification_status`, and only `_move` below writes it —
one guarded UPDATE per move of the table in `rules.TRANSITIONS`, the status change recorded with who and why
and mailed to the user in the same transaction. Every gate asks this module:

- payouts (`billing.payouts`) → `verified_among`;
- the unverified quotas on submit (`billing.quotas`) → `is_verified_user` on the row auth already loaded;
- publishing as a Verified publisher (`marketplace`) → `is_verified`.

Because the gates read the status when they run, a verification lifts them at once and a revocation
re-applies them at once; nothing is cached."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.accounts.mailer import Mailer
from coordinator.accounts.models import User
from coordinator.accounts.principals import evict_on_commit
from coordinator.errors import Conflict, NotFound, ValidationFailed
from coordinator.repo.base import utcnow
from coordinator.repo.database import Database
from coordinator.verification import rules
from coordinator.verification.models import StripeIdentityEvent, Verification, VerificationEvent
from coordinator.verification.providers import (
    StripeIdentityProvider,
    VerificationProvider,
)
from coordinator.verification.rules import Transition

log = structlog.get_logger(__name__)


# --- the gates' questions --------------------------------------------------------------------------

STATUS_SQL = text("SELECT verification_status FROM users WHERE id = :user_id")
EMAIL_SQL = text("SELECT email FROM users WHERE id = :user_id")

VERIFIED_AMONG_SQL = text(
    "SELECT id FROM users WHERE id = ANY(CAST(:ids AS int[])) AND verification_status = 'verified'"
)


async def is_verified(session: AsyncSession, user_id: int) -> bool:
    """Whether `user_id`'s identity is verified now: the check for publishing as a Verified publisher
    (call it as `await coordinator.verification.service.is_verified(session, user_id)` inside the
    transaction that publishes). False for an unknown user and for every status but `verified` (pending,
    rejected, revoked). One indexed read; it takes no lock — a revocation committed afterwards is seen by
    the next call."""
    status = (await session.execute(STATUS_SQL, {"user_id": user_id})).scalar()
    return rules.is_verified_status(status)


def is_verified_user(user: User) -> bool:
    """`is_verified` for a user row the caller loaded in this request (the authenticated principal): the
    same column, without another query on the submit path."""
    return rules.is_verified_status(user.verification_status)


async def verified_among(session: AsyncSession, user_ids: Iterable[int]) -> set[int]:
    """Which of `user_ids` are verified now (the payout batch's gate)."""
    ids = sorted(set(user_ids))
    if not ids:
        return set()
    return set((await session.execute(VERIFIED_AMONG_SQL, {"ids": ids})).scalars())


# --- moving a status: the one writer of users.verification_status ----------------------------------

# The guarded move: applies only from one of the transition's states; no row when the status is elsewhere.
MOVE_SQL = text(
    """
    WITH old AS (SELECT id, verification_status AS status, email FROM users WHERE id = :user_id FOR UPDATE)
    UPDATE users SET verification_status = :to_state, updated_at = now()
    FROM old WHERE users.id = old.id AND old.status = ANY(CAST(:from_states AS text[]))
    RETURNING old.status, old.email
    """
)


async def _move(
    session: AsyncSession,
    mailer: Mailer,
    user_id: int,
    move: Transition,
    *,
    verification_id: int | None,
    actor_id: int | None = None,
    reason: str | None = None,
) -> str | None:
    """Apply `move` to the user's status, record it and mail the user; the previous status, or None when
    the status was not one the move starts from (nothing written)."""
    params = {"user_id": user_id, "to_state": move.to_state, "from_states": sorted(move.from_states)}
    row = (await session.execute(MOVE_SQL, params)).first()
    if row is None:
        return None
    previous, email = str(row[0]), str(row[1])
    evict_on_commit(session, user_id=user_id)  # the quota caps follow the status from the next request
    session.add(
        VerificationEvent(
            user_id=user_id,
            verification_id=verification_id,
            from_status=previous,
            to_status=move.to_state,
            actor=move.actor,
            actor_id=actor_id,
            reason=reason,
        )
    )
    subject, body = rules.status_mail(move.to_state, reason)
    await mailer.send(session, email, subject, body)
    log.info("verification.moved", user_id=user_id, move=move.name, previous=previous, to=move.to_state)
    return previous


async def _status_or_404(session: AsyncSession, user_id: int) -> str:
    status = (await session.execute(STATUS_SQL, {"user_id": user_id})).scalar()
    if status is None:
        raise NotFound("No such user")
    return str(status)


async def latest_attempt(session: AsyncSession, user_id: int, *, lock: bool = False) -> Verification | None:
    query = select(Verification).where(Verification.user_id == user_id).order_by(Verification.id.desc())
    if lock:
        query = query.with_for_update()
    return (await session.execute(query.limit(1))).scalar_one_or_none()


@dataclass(frozen=True)
class StatusView:
    user_id: int
    status: str
    attempt: Verification | None

    @property
    def can_start(self) -> bool:
        return rules.can_start(self.status)


async def get_status(session: AsyncSession, user_id: int) -> StatusView:
    status = await _status_or_404(session, user_id)
    return StatusView(user_id, status, await latest_attempt(session, user_id))


# --- start (and retry after rejection) -------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    view: StatusView
    client_secret: str | None = None
    url: str | None = None


def _builtin_statement(legal_name: str | None, country: str | None) -> tuple[str, str]:
    errors: dict[str, list[str]] = {}
    name = (legal_name or "").strip()
    if not name:
        errors["legal_name"] = ["is required by the built-in verification"]
    code = (country or "").strip().upper()
    if not (len(code) == 2 and code.isascii() and code.isalpha()):
        errors["country"] = ["must be an ISO 3166-1 alpha-2 country code"]
    if errors:
        raise ValidationFailed("Invalid input", errors)
    return name[:300], code


async def start(
    db: Database,
    mailer: Mailer,
    provider: VerificationProvider,
    user_id: int,
    *,
    legal_name: str | None = None,
    country: str | None = None,
) -> Started:
    """Open a verification: a Stripe Identity session (the page uses its client secret or URL), or a
    statement of name and country for an admin to review. Allowed when unverified, pending (a new attempt
    replaces the undecided one) or rejected (retry); 409 when verified or revoked. The provider is called
    before anything is written: if it fails, nothing is."""
    statement = _builtin_statement(legal_name, country) if provider.name == "builtin" else None
    async with db.session() as session:
        status = await _status_or_404(session, user_id)
    if not rules.can_start(status):
        raise Conflict(
            f"The verification is {status}; it cannot be started again", code="verification_" + status
        )
    opened = await provider.start(user_id, f"verification-start-{user_id}-{uuid.uuid4().hex}")
    async with db.transaction() as session:
        await session.execute(
            update(Verification)
            .where(Verification.user_id == user_id, Verification.status == rules.PENDING)
            .values(status=rules.SUPERSEDED, decided_at=utcnow(), verified_name=None, country=None)
        )
        attempt = Verification(
            user_id=user_id,
            status=rules.PENDING,
            provider=provider.name,
            provider_ref=opened.ref,
            verified_name=statement[0] if statement else None,
            country=statement[1] if statement else None,
        )
        session.add(attempt)
        try:
            await session.flush()
        except IntegrityError as exc:  # a concurrent start of the same user committed its attempt first
            raise Conflict("Another verification of this account is being started; try again") from exc
        if (
            await _move(session, mailer, user_id, rules.START, verification_id=attempt.id, actor_id=user_id)
            is None
        ):
            raise Conflict("The verification changed meanwhile; try again")
        view = StatusView(user_id, rules.PENDING, attempt)
    return Started(view, opened.client_secret, opened.url)


# --- admin decisions -------------------------------------------------------------------------------


async def decide(
    session: AsyncSession,
    mailer: Mailer,
    user_id: int,
    move: Transition,
    *,
    admin_id: int,
    reason: str | None = None,
) -> StatusView:
    """An admin's `APPROVE`, `REJECT` or `REVOKE` of the user's current attempt (a reason is required to
    reject or revoke); 409 when the status is not one the move starts from."""
    if move.actor != rules.ACTOR_ADMIN:
        raise ValueError(f"{move.name} is not an admin decision")
    reason = (reason or "").strip() or None
    if move.needs_reason and not reason:
        raise ValidationFailed("Invalid input", {"reason": [f"is required to {move.name}"]})
    status = await _status_or_404(session, user_id)
    attempt = await latest_attempt(session, user_id, lock=True)
    if (
        attempt is None
        or await _move(
            session, mailer, user_id, move, verification_id=attempt.id, actor_id=admin_id, reason=reason
        )
        is None
    ):
        raise Conflict(f"Cannot {move.name} a verification that is {status}", code="verification_" + status)
    attempt.status = move.to_state
    attempt.reviewer_id = admin_id
    attempt.reason = reason
    attempt.decided_at = utcnow()
    if move.to_state == rules.REJECTED:  # a stated name that was not verified is not kept
        attempt.verified_name = attempt.country = None
    await session.flush()
    return StatusView(user_id, move.to_state, attempt)


@dataclass(frozen=True)
class QueueItem:
    attempt: Verification
    email: str


async def queue(session: AsyncSession, *, status: str = rules.PENDING, limit: int = 100) -> list[QueueItem]:
    """Attempts in `status` (the review queue: pending, oldest first)."""
    rows = await session.execute(
        select(Verification, User.email)
        .join(User, User.id == Verification.user_id)
        .where(Verification.status == status)
        .order_by(Verification.created_at, Verification.id)
        .limit(limit)
    )
    return [QueueItem(attempt, email) for attempt, email in rows.all()]


async def history(session: AsyncSession, user_id: int) -> list[VerificationEvent]:
    """Every status change of the user, oldest first, with who and why."""
    await _status_or_404(session, user_id)
    rows = await session.execute(
        select(VerificationEvent).where(VerificationEvent.user_id == user_id).order_by(VerificationEvent.id)
    )
    return list(rows.scalars())


# --- Stripe Identity webhook -----------------------------------------------------------------------


class UnknownSession(Conflict):
    """A session of ours (it carries our metadata) whose attempt is not committed yet: Stripe retries."""

    code = "unknown_verification_session"


RECORD_EVENT_SQL = text(
    """
    INSERT INTO stripe_identity_events (event_id, type, session_ref, outcome)
    VALUES (:event_id, :type, :ref, 'received')
    ON CONFLICT (event_id) DO NOTHING RETURNING event_id
    """
)


async def handle_stripe_webhook(
    db: Database, mailer: Mailer, provider: StripeIdentityProvider, payload: bytes, signature: str | None
) -> tuple[str, str]:
    """Apply one `identity.verification_session.*` webhook; returns (event id, outcome).

    Refused (`InvalidWebhook`, 400, nothing written) unless the `Stripe-Signature` is valid and recent.
    Idempotent on the event id: a redelivered event answers `duplicate` and changes nothing. An event for
    an attempt already decided or replaced is recorded as `stale` (events may arrive out of order)."""
    event = provider.parse_event(payload, signature)
    event_id, event_type = str(event.get("id") or ""), str(event.get("type") or "")
    obj: dict[str, Any] = (event.get("data") or {}).get("object") or {}
    if not event_type.startswith(rules.STRIPE_EVENT_PREFIX) or not event_id:
        return event_id, "ignored"
    owner = (obj.get("metadata") or {}).get(rules.STRIPE_USER_METADATA)
    session_ref = str(obj.get("id") or "")
    if not owner or not session_ref:
        return event_id, "not_ours"
    async with db.session() as session:
        if await session.get(StripeIdentityEvent, event_id) is not None:
            return event_id, "duplicate"
    outcome = rules.stripe_outcome(event_type, obj)
    identity = None
    if outcome.transition is rules.PROVIDER_VERIFIED:
        identity = rules.verified_identity(await provider.retrieve_verified(session_ref))
    async with db.transaction() as session:
        params = {"event_id": event_id, "type": event_type, "ref": session_ref}
        if (await session.execute(RECORD_EVENT_SQL, params)).scalar() is None:
            return event_id, "duplicate"  # a concurrent delivery of the same event won
        attempt = (
            await session.execute(
                select(Verification)
                .where(Verification.provider == "stripe", Verification.provider_ref == session_ref)
                .with_for_update()
            )
        ).scalar_one_or_none()
        if attempt is None:
            raise UnknownSession(f"No verification attempt for session {session_ref} yet; retry later")
        result = await _apply_stripe_outcome(session, mailer, attempt, outcome, identity)
        await session.execute(
            update(StripeIdentityEvent).where(StripeIdentityEvent.event_id == event_id).values(outcome=result)
        )
    log.info("verification.stripe_event", event_id=event_id, type=event_type, outcome=result)
    return event_id, result


async def _apply_stripe_outcome(
    session: AsyncSession,
    mailer: Mailer,
    attempt: Verification,
    outcome: rules.StripeOutcome,
    identity: rules.VerifiedIdentity | None,
) -> str:
    move = outcome.transition
    if move is None:
        return "recorded"
    if attempt.status != rules.PENDING:
        return "stale"
    moved = await _move(
        session, mailer, attempt.user_id, move, verification_id=attempt.id, reason=outcome.reason
    )
    if moved is None:
        return "stale"
    attempt.status = move.to_state
    attempt.reason = outcome.reason
    attempt.decided_at = utcnow()
    if identity is not None:
        attempt.verified_name, attempt.country = identity.name, identity.country
    await session.flush()
    return "applied"
