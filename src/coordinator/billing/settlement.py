"""Money around a job: the charge at submit, the settlement at success, the refund otherwise.

Each function runs inside the caller's transaction (the one that inserts or transitions the job), and each
write carries an idempotency key derived from the job id, so a retried or duplicated settlement is a no-op.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from coordinator.billing import ledger
from coordinator.karma import service as karma
from coordinator.repo.raw import Sql


@dataclass(frozen=True)
class Settlement:
    paid: Decimal
    refunded: Decimal
    earned: Decimal
    applied: bool = True  # False when the job had already been settled or refunded
    balance: Decimal | None = None  # the consumer's balance after the refund (None: nothing moved)


# The success settlement in one statement: the refund of the unused budget (`ledger.CREDIT_CTES`: its key
# marks the job as settled), then, only if that row was new, the Island's earning (once per job: the unique
# job_id) and its running total.
_EARNING_CTE = """
    earning AS (
        INSERT INTO host_earnings (host_id, owner_id, job_id, amount)
        SELECT CAST(:earning_host_id AS uuid), :owner_id, :job_id, :earned FROM credit_tx
        WHERE CAST(:earned AS numeric) > 0
        ON CONFLICT (job_id) DO NOTHING
        RETURNING amount
    )
"""
SETTLE_SUCCESS_SQL = text(
    f"""
    WITH {ledger.CREDIT_CTES}, {_EARNING_CTE},
    total AS (
        UPDATE hosts SET earnings_total = earnings_total + earning.amount
        FROM earning WHERE hosts.id = CAST(:earning_host_id AS uuid)
    )
    SELECT credits FROM balance
    """
)

# The same with the Island's karma for the success (`karma.service.success_write`) written by the same
# UPDATE of its row as the earnings total: one statement for the whole of a success's money and karma.
SETTLE_SUCCESS_KARMA_SQL = text(
    f"""
    WITH {ledger.CREDIT_CTES}, {_EARNING_CTE},
    island AS (
        UPDATE hosts SET earnings_total = earnings_total + COALESCE((SELECT amount FROM earning), 0),
                         {karma.KARMA_SET}
        WHERE id = CAST(:earning_host_id AS uuid)
        RETURNING karma
    ),
    karma_event AS ({karma.karma_event_sql("island", "CAST(:earning_host_id AS uuid)")})
    SELECT credits FROM balance
    """
)


async def settle_success(
    session: Sql,
    *,
    job_id: uuid.UUID,
    user_id: int,
    budget: Decimal,
    clearing_price: Decimal,
    host_id: uuid.UUID | None,
    host_owner_id: int | None,
    platform_fee: Decimal = Decimal(0),
    balance_locked: bool = False,
    karma_write: Mapping[str, Any] | None = None,
) -> Settlement:
    """The consumer pays the clearing price (capped at the budget); the rest of the budget is refunded; the
    Island's owner earns the clearing price minus the platform fee. `balance_locked`: the transaction holds
    the consumer's balance row already (the finish statement took it). `karma_write`: the Island's karma
    for the success (`karma.service.success_write`, its row locked by this transaction), written by the
    same statement."""
    paid = min(max(clearing_price, Decimal(0)), budget)
    refund = budget - paid
    earned = paid * (Decimal(1) - platform_fee) if host_id is not None and paid > 0 else Decimal(0)
    if not balance_locked:
        await session.execute(ledger.LOCK_BALANCE_SQL, {"user_id": user_id})
    # The refund row is written even when it is zero: its key marks the job as settled, so a later failure
    # path (or a second success) can neither refund nor pay the Island again.
    statement, karma_params = (
        (SETTLE_SUCCESS_KARMA_SQL, karma_write)
        if karma_write is not None and host_id is not None
        else (SETTLE_SUCCESS_SQL, {})
    )
    balance = (
        await session.execute(
            statement,
            {
                "user_id": user_id,
                "type": "refund",
                "amount": refund,
                "job_id": job_id,
                "host_id": None,
                "key": f"refund:{job_id}",
                "description": "unused budget",
                "owner_id": host_owner_id,
                "earned": earned,
                "earning_host_id": host_id,
                **karma_params,
            },
        )
    ).scalar()
    if balance is None:
        return Settlement(paid=Decimal(0), refunded=Decimal(0), earned=Decimal(0), applied=False)
    ledger.count_on_commit(session, "refund", refund)
    if earned > 0:
        # Earnings are not a ledger movement (host_earnings); counted on commit like the ledger's.
        ledger.count_on_commit(session, "earning", earned)
    return Settlement(paid=paid, refunded=refund, earned=earned, balance=Decimal(balance))


async def refund_in_full(
    session: Sql,
    *,
    job_id: uuid.UUID,
    user_id: int,
    amount: Decimal,
    reason: str,
    balance_locked: bool = False,
) -> Decimal | None:
    """Give the whole budget back (failure, cancel, timeout, dead-letter, unplaceable). The new balance,
    or None when nothing moved (nothing to refund, or refunded already). `balance_locked`: as in
    `settle_success`."""
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
        locked=balance_locked,
    )
    return balance
