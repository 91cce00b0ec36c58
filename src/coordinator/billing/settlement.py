"""Money around a job: the charge at submit, the settlement at success, the refund otherwise.

Each function runs inside the caller's transaction (the one that inserts or transitions the job), and each
write carries an idempotency key derived from the job id, so a retried or duplicated settlement is a no-op.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.billing import ledger


@dataclass(frozen=True)
class Settlement:
    paid: Decimal
    refunded: Decimal
    earned: Decimal
    applied: bool = True  # False when the job had already been settled or refunded
    balance: Decimal | None = None  # the consumer's balance after the refund (None: nothing moved)


# Records an Island's earning once per job; the unique job_id makes a second call a no-op.
RECORD_EARNING_SQL = text(
    """
    WITH earning AS (
        INSERT INTO host_earnings (host_id, owner_id, job_id, amount)
        VALUES (:host_id, :owner_id, :job_id, :amount)
        ON CONFLICT (job_id) DO NOTHING
        RETURNING amount
    )
    UPDATE hosts SET earnings_total = earnings_total + (SELECT amount FROM earning)
    WHERE id = :host_id AND EXISTS (SELECT 1 FROM earning)
    RETURNING id
    """
)


async def settle_success(
    session: AsyncSession,
    *,
    job_id: uuid.UUID,
    user_id: int,
    budget: Decimal,
    clearing_price: Decimal,
    host_id: uuid.UUID | None,
    host_owner_id: int | None,
    platform_fee: Decimal = Decimal(0),
) -> Settlement:
    """The consumer pays the clearing price (capped at the budget); the rest of the budget is refunded; the
    Island's owner earns the clearing price minus the platform fee."""
    paid = min(max(clearing_price, Decimal(0)), budget)
    refund = budget - paid
    # The refund row is written even when it is zero: its key marks the job as settled, so a later failure
    # path (or a second success) can neither refund nor pay the Island again.
    moved = await ledger.credit(
        session,
        user_id,
        refund,
        type="refund",
        job_id=job_id,
        idempotency_key=f"refund:{job_id}",
        description="unused budget",
    )
    if moved is None:
        return Settlement(paid=Decimal(0), refunded=Decimal(0), earned=Decimal(0), applied=False)
    earned = Decimal(0)
    if host_id is not None and paid > 0:
        earned = paid * (Decimal(1) - platform_fee)
        await session.execute(
            RECORD_EARNING_SQL,
            {"host_id": host_id, "owner_id": host_owner_id, "job_id": job_id, "amount": earned},
        )
    if earned > 0:
        # Earnings are not a ledger movement (host_earnings); counted on commit like the ledger's.
        ledger.count_on_commit(session, "earning", earned)
    return Settlement(paid=paid, refunded=refund, earned=earned, balance=moved)


async def refund_in_full(
    session: AsyncSession, *, job_id: uuid.UUID, user_id: int, amount: Decimal, reason: str
) -> Decimal | None:
    """Give the whole budget back (failure, cancel, timeout, dead-letter, unplaceable). The new balance,
    or None when nothing moved (nothing to refund, or refunded already)."""
    if amount <= 0:
        return None
    balance = await ledger.credit(
        session,
        user_id,
        amount,
        type="refund",
        job_id=job_id,
        idempotency_key=f"refund:{job_id}",
        description=reason,
    )
    return balance
