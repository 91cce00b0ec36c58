"""The credit ledger: every balance change is a guarded UPDATE plus a `transactions` row, atomically."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import text

from coordinator.repo import raw
from coordinator.repo.raw import Sql
from coordinator.telemetry import metrics

# Locks a balance row for a credit, before `CREDIT_SQL` (see `credit`). FOR NO KEY UPDATE is the mode an
# UPDATE of `credits` takes: it queues with the debits, while FOR UPDATE also waited for every KEY SHARE lock
# (the foreign key check of each job or ledger row inserted for this user) and, under a stream of overlapping
# submissions, until the stream stopped (issue 19: refunds, hence job completions, stalled behind one busy
# account).
LOCK_BALANCE_SQL = text("SELECT credits FROM users WHERE id = :user_id FOR NO KEY UPDATE")

# Adds to a balance and records the movement (`credit_tx`, then `balance`); the idempotency key makes a
# retried call a no-op. Run with the row locked by an earlier statement of the transaction
# (`LOCK_BALANCE_SQL`, or the finish statement's lock, `jobs.repository._finish_sql`): this statement's
# snapshot then sees the row's newest version (and a concurrent duplicate's committed ledger row). Locking
# inside this statement (in the CTE) deadlocked when the lock followed the row to a newer version than the
# outer UPDATE's snapshot saw. Also the start of the success settlement (`billing.settlement`).
CREDIT_CTES = """
    credit_tx AS (
        INSERT INTO transactions
            (user_id, type, amount, balance_after, job_id, host_id, idempotency_key, description)
        SELECT u.id, :type, :amount, u.credits + :amount, :job_id, :host_id, :key, :description
        FROM users u WHERE u.id = :user_id
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING balance_after
    ),
    balance AS (
        UPDATE users SET credits = credits + :amount, updated_at = now()
        WHERE id = :user_id AND EXISTS (SELECT 1 FROM credit_tx)
        RETURNING credits
    )
"""
CREDIT_SQL = text(f"WITH {CREDIT_CTES} SELECT credits FROM balance")

# Takes from a balance only if it covers the amount and the key is unused: the row count is the answer.
# (A concurrent duplicate that slips past NOT EXISTS fails on the unique key and rolls back.)
DEBIT_SQL = text(
    """
    WITH upd AS (
        UPDATE users SET credits = credits - :amount, updated_at = now()
        WHERE id = :user_id AND credits >= :amount
          AND NOT EXISTS (SELECT 1 FROM transactions WHERE idempotency_key = :key)
        RETURNING credits
    )
    INSERT INTO transactions (user_id, type, amount, balance_after, job_id, idempotency_key, description)
    SELECT :user_id, :type, -:amount, credits, :job_id, :key, :description FROM upd
    RETURNING balance_after
    """
)


_UNCOMMITTED = "ledger_uncommitted_moves"


def count_on_commit(session: Sql, type: str, amount: Decimal) -> None:
    """Count a movement in `credits_moved` once its transaction commits (a rollback forgets it)."""
    session.info.setdefault(_UNCOMMITTED, []).append((type, amount))


@raw.on_commit
def _committed(info: raw.Info) -> None:
    for type, amount in info.pop(_UNCOMMITTED, ()):
        metrics.credits_moved.labels(type=type).inc(float(abs(amount)))


@raw.on_rollback
def _rolled_back(info: raw.Info) -> None:
    info.pop(_UNCOMMITTED, None)


async def credit(
    session: Sql,
    user_id: int,
    amount: Decimal,
    *,
    type: str,
    job_id: uuid.UUID | None = None,
    host_id: uuid.UUID | None = None,
    idempotency_key: str | None = None,
    description: str | None = None,
    locked: bool = False,
) -> Decimal | None:
    """Add `amount` to a user's balance. Returns the new balance, or None if the key was already used.
    `locked`: the transaction holds the balance row's lock already (see `CREDIT_CTES`)."""
    if not locked:
        await session.execute(LOCK_BALANCE_SQL, {"user_id": user_id})
    row = (
        await session.execute(
            CREDIT_SQL,
            {
                "user_id": user_id,
                "type": type,
                "amount": amount,
                "job_id": job_id,
                "host_id": host_id,
                "key": idempotency_key,
                "description": description,
            },
        )
    ).first()
    if row is None:
        return None
    count_on_commit(session, type, amount)
    return Decimal(row[0])


async def debit(
    session: Sql,
    user_id: int,
    amount: Decimal,
    *,
    type: str = "charge",
    job_id: uuid.UUID | None = None,
    idempotency_key: str | None = None,
    description: str | None = None,
) -> Decimal | None:
    """Take `amount` from a user's balance. Returns the new balance, or None when it does not cover it."""
    row = (
        await session.execute(
            DEBIT_SQL,
            {
                "user_id": user_id,
                "type": type,
                "amount": amount,
                "job_id": job_id,
                "key": idempotency_key,
                "description": description,
            },
        )
    ).first()
    if row is None:
        return None
    count_on_commit(session, type, amount)
    return Decimal(row[0])


async def grant(session: Sql, user_id: int, amount: Decimal, description: str) -> Decimal | None:
    return await credit(session, user_id, amount, type="grant", description=description)


# Proves the ledger: for every user, balance = sum of its movements (grants + refunds + earnings - charges
# - payouts). Returns the users for whom it does not hold.
RECONCILE_SQL = text(
    """
    SELECT u.id, u.credits, COALESCE(SUM(t.amount), 0) AS ledger
    FROM users u LEFT JOIN transactions t ON t.user_id = u.id
    GROUP BY u.id, u.credits
    HAVING u.credits <> COALESCE(SUM(t.amount), 0)
    """
)


async def unreconciled_users(session: Sql) -> list[tuple[int, Decimal, Decimal]]:
    rows = (await session.execute(RECONCILE_SQL)).all()
    return [(int(r[0]), Decimal(r[1]), Decimal(r[2])) for r in rows]


# The whole ledger at once: balances against the movements of each type.
LEDGER_TOTALS_SQL = text(
    """
    SELECT (SELECT COALESCE(SUM(credits), 0) FROM users),
           COALESCE(SUM(amount) FILTER (WHERE type = 'grant'), 0),
           COALESCE(-SUM(amount) FILTER (WHERE type = 'charge'), 0),
           COALESCE(SUM(amount) FILTER (WHERE type = 'refund'), 0),
           COALESCE(SUM(amount) FILTER (WHERE type NOT IN ('grant', 'charge', 'refund')), 0)
    FROM transactions
    """
)


@dataclass(frozen=True)
class LedgerTotals:
    balances: Decimal
    grants: Decimal
    charges: Decimal
    refunds: Decimal
    other: Decimal  # adjustments of other types (admin corrections), signed

    @property
    def imbalance(self) -> Decimal:
        """Zero when grants = balances + charges − refunds (± other movements) across every account."""
        return self.grants + self.other - self.charges + self.refunds - self.balances


async def ledger_totals(session: Sql) -> LedgerTotals:
    row = (await session.execute(LEDGER_TOTALS_SQL)).one()
    return LedgerTotals(*(Decimal(v) for v in row))
