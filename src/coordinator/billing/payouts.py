"""The weekly payout batch: pay Island owners their unpaid earnings, once per owner per period.

Two phases, each crash-safe: (1) in one transaction per owner, a `pending` payout row is created for the
period (unique per owner and period) and the earnings it covers are bound to it; (2) each pending payout
is sent to the provider with idempotency key `payout-<id>` and then marked `paid`. A crash between the
provider call and the mark leaves the row `pending`; the next run resumes it with the same key, and the
provider answers with the same transfer instead of paying twice."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.billing.providers import PayoutError, PayoutProvider, PayoutRequest
from coordinator.repo.database import Database
from coordinator.verification import service as verification

log = structlog.get_logger(__name__)


def period_start(today: dt.date) -> dt.date:
    """The Monday of the week a batch runs in: its period key."""
    return today - dt.timedelta(days=today.weekday())


# Owners with unpaid earnings from Islands at or above their (metro) monetization threshold; the identity
# gate is applied next, by the verification context (`_verified_owners`).
ELIGIBLE_OWNERS_SQL = text(
    """
    SELECT DISTINCT e.owner_id
    FROM host_earnings e
    JOIN hosts h ON h.id = e.host_id
    LEFT JOIN metro_settings m ON m.region = h.region
    WHERE e.payout_id IS NULL AND h.karma >= COALESCE(m.monetization_threshold, :threshold)
    ORDER BY e.owner_id
    """
)

# Locks one owner's payable earnings (so a concurrent batch cannot bind them twice).
PAYABLE_EARNINGS_SQL = text(
    """
    SELECT e.id, e.amount
    FROM host_earnings e
    JOIN hosts h ON h.id = e.host_id
    LEFT JOIN metro_settings m ON m.region = h.region
    WHERE e.owner_id = :owner_id AND e.payout_id IS NULL
      AND h.karma >= COALESCE(m.monetization_threshold, :threshold)
    FOR UPDATE OF e SKIP LOCKED
    """
)

# The period's payout row; a second batch for the same period finds it and creates nothing.
CREATE_PAYOUT_SQL = text(
    """
    INSERT INTO payouts (owner_id, period_start, amount, status, provider)
    VALUES (:owner_id, :period, :amount, 'pending', :provider)
    ON CONFLICT (owner_id, period_start) DO NOTHING
    RETURNING id
    """
)

BIND_EARNINGS_SQL = text("UPDATE host_earnings SET payout_id = :payout_id WHERE id = ANY(:ids)")

PENDING_PAYOUTS_SQL = text(
    """
    SELECT p.id, p.owner_id, p.amount, a.account_ref
    FROM payouts p LEFT JOIN payout_accounts a ON a.user_id = p.owner_id AND a.provider = p.provider
    WHERE p.status = 'pending' AND p.provider = :provider
    ORDER BY p.id
    """
)

MARK_PAID_SQL = text(
    "UPDATE payouts SET status = 'paid', provider_ref = :ref, paid_at = now() "
    "WHERE id = :id AND status = 'pending' RETURNING id"
)

# A refused payout releases its earnings, so they are paid in a later period once the cause is fixed.
MARK_FAILED_SQL = text(
    """
    WITH failed AS (
        UPDATE payouts SET status = 'failed', details = jsonb_build_object('error', CAST(:error AS text))
        WHERE id = :id AND status = 'pending' RETURNING id
    )
    UPDATE host_earnings SET payout_id = NULL WHERE payout_id IN (SELECT id FROM failed)
    """
)


# Why the batch passed an owner by (BatchResult.skipped).
SKIP_UNVERIFIED = "identity_not_verified"


@dataclass
class BatchResult:
    created: int = 0
    paid: int = 0
    failed: int = 0
    retry_later: int = 0
    amount_paid: Decimal = Decimal(0)
    # Owners passed by, and why: their earnings stay unpaid (and a pending payout stays pending) until the
    # cause is fixed, then a later run pays them.
    skipped: dict[int, str] = field(default_factory=dict)


async def _verified_owners(session: AsyncSession, owner_ids: list[int], result: BatchResult) -> set[int]:
    """The payout gate, in one place: only verified Island owners are paid; the others are recorded in
    `result.skipped` with the reason and logged."""
    verified = await verification.verified_among(session, owner_ids)
    for owner_id in owner_ids:
        if owner_id not in verified:
            result.skipped[owner_id] = SKIP_UNVERIFIED
            log.info("payout.skipped", owner_id=owner_id, reason=SKIP_UNVERIFIED)
    return verified


async def create_pending_payouts(
    db: Database,
    provider: str,
    period: dt.date,
    *,
    threshold: int = 10,
    minimum: Decimal = Decimal(0),
    result: BatchResult | None = None,
) -> int:
    """Phase 1: one `pending` payout per eligible verified owner for `period`, bound to what it pays."""
    result = result if result is not None else BatchResult()
    async with db.session() as session:
        owners = list((await session.execute(ELIGIBLE_OWNERS_SQL, {"threshold": threshold})).scalars())
        verified = await _verified_owners(session, owners, result)
    created = 0
    for owner_id in [o for o in owners if o in verified]:
        async with db.transaction() as session:
            rows = (
                await session.execute(PAYABLE_EARNINGS_SQL, {"owner_id": owner_id, "threshold": threshold})
            ).all()
            amount = sum((Decimal(r[1]) for r in rows), Decimal(0))
            if not rows or amount <= 0 or amount < minimum:
                continue
            params = {"owner_id": owner_id, "period": period, "amount": amount, "provider": provider}
            payout_id = (await session.execute(CREATE_PAYOUT_SQL, params)).scalar()
            if payout_id is None:
                continue  # already paid (or being paid) this period: these earnings wait for the next
            await session.execute(BIND_EARNINGS_SQL, {"payout_id": payout_id, "ids": [r[0] for r in rows]})
            created += 1
    return created


async def pay_pending(db: Database, provider: PayoutProvider, result: BatchResult) -> None:
    """Phase 2: send every pending payout of this provider (new ones and those a crash left behind)."""
    async with db.session() as session:
        pending = (await session.execute(PENDING_PAYOUTS_SQL, {"provider": provider.name})).all()
        # A payout left pending by a crash is not sent to an owner revoked since; it waits for reinstatement.
        verified = await _verified_owners(session, sorted({row[1] for row in pending}), result)
    for payout_id, owner_id, amount, account_ref in pending:
        if owner_id not in verified:
            result.retry_later += 1
            continue
        request = PayoutRequest(payout_id, owner_id, Decimal(amount), account_ref, f"payout-{payout_id}")
        try:
            ref = await provider.pay(request)
        except PayoutError as exc:
            log.warning("payout.failed", payout_id=payout_id, error=str(exc), permanent=exc.permanent)
            if exc.permanent:
                async with db.transaction() as session:
                    await session.execute(MARK_FAILED_SQL, {"id": payout_id, "error": str(exc)})
                result.failed += 1
            else:
                result.retry_later += 1
            continue
        async with db.transaction() as session:
            marked = (await session.execute(MARK_PAID_SQL, {"id": payout_id, "ref": ref})).scalar()
        if marked:
            result.paid += 1
            result.amount_paid += Decimal(amount)


async def run_payout_batch(
    db: Database,
    provider: PayoutProvider,
    *,
    today: dt.date | None = None,
    threshold: int = 10,
    minimum: Decimal = Decimal(0),
) -> BatchResult:
    """The PayoutBatch worker: create this period's payouts, then pay everything pending."""
    period = period_start(today or dt.datetime.now(dt.UTC).date())
    result = BatchResult()
    result.created = await create_pending_payouts(
        db, provider.name, period, threshold=threshold, minimum=minimum, result=result
    )
    await pay_pending(db, provider, result)
    return result


async def set_payout_account(db: Database, user_id: int, provider: str, account_ref: str) -> None:
    """Record where an owner is paid (e.g. their Stripe Connect account `acct_…`)."""
    async with db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO payout_accounts (user_id, provider, account_ref) VALUES (:u, :p, :a) "
                "ON CONFLICT (user_id) DO UPDATE "
                "SET provider = EXCLUDED.provider, account_ref = EXCLUDED.account_ref"
            ),
            {"u": user_id, "p": provider, "a": account_ref},
        )
