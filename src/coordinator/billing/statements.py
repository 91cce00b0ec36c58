"""Read side of the ledger for people: a user's movements with filters, and spend per day."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.billing.models import Transaction
from coordinator.errors import ValidationFailed

TRANSACTION_TYPES = ("grant", "charge", "refund", "earning", "payout")


@dataclass(frozen=True)
class LedgerFilter:
    type: str | None = None
    since: date | None = None
    until: date | None = None  # inclusive

    def validated(self) -> LedgerFilter:
        if self.type is not None and self.type not in TRANSACTION_TYPES:
            raise ValidationFailed(
                "Invalid filter", {"type": [f"must be one of {', '.join(TRANSACTION_TYPES)}"]}
            )
        if self.since and self.until and self.since > self.until:
            raise ValidationFailed("Invalid filter", {"since": ["must not be after 'until'"]})
        return self


async def list_transactions(
    session: AsyncSession, user_id: int, flt: LedgerFilter, *, limit: int = 50, offset: int = 0
) -> tuple[list[Transaction], int]:
    """The user's movements matching the filter, newest first, and how many match in all."""
    flt = flt.validated()
    where = [Transaction.user_id == user_id]
    if flt.type:
        where.append(Transaction.type == flt.type)
    if flt.since:
        where.append(Transaction.created_at >= flt.since)
    if flt.until:
        where.append(Transaction.created_at < flt.until + timedelta(days=1))
    total = await session.scalar(select(func.count()).select_from(Transaction).where(*where))
    rows = await session.execute(
        select(Transaction).where(*where).order_by(Transaction.id.desc()).limit(limit).offset(offset)
    )
    return list(rows.scalars()), int(total or 0)


# Net spend per UTC day: charges minus refunds of the user's jobs, over the last :days days.
SPEND_PER_DAY_SQL = text(
    """
    SELECT (created_at AT TIME ZONE 'UTC')::date AS day, -SUM(amount) AS spent
    FROM transactions
    WHERE user_id = :user_id AND type IN ('charge', 'refund')
      AND created_at >= (now() AT TIME ZONE 'UTC')::date - make_interval(days => :days - 1)
    GROUP BY day ORDER BY day
    """
)


async def spend_per_day(session: AsyncSession, user_id: int, *, days: int = 30) -> list[tuple[date, Decimal]]:
    """One entry per day of the window (days without spend are 0), oldest first."""
    rows = {
        r[0]: Decimal(r[1])
        for r in await session.execute(SPEND_PER_DAY_SQL, {"user_id": user_id, "days": days})
    }
    today = await session.scalar(text("SELECT (now() AT TIME ZONE 'UTC')::date"))
    assert isinstance(today, date)
    window = [today - timedelta(days=days - 1 - i) for i in range(days)]
    return [(day, max(Decimal(0), rows.get(day, Decimal(0)))) for day in window]
