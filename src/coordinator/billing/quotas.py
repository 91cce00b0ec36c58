"""Quotas: request rate per API key (a counter per minute in PostgreSQL, shared by every replica), active
jobs per user and the daily spending cap of unverified accounts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.accounts.models import User
from coordinator.config import Settings
from coordinator.errors import RateLimited


@dataclass(frozen=True)
class RateWindow:
    """One bucket's use of the current minute."""

    limit: int
    count: int
    reset_epoch: int  # when the window ends (Unix seconds)

    @property
    def remaining(self) -> int:
        return max(self.limit - self.count, 0)

    @property
    def exceeded(self) -> bool:
        return self.count > self.limit

    def retry_after(self, now_epoch: float) -> int:
        return max(int(self.reset_epoch - now_epoch + 0.999), 1)

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_epoch),
        }


# Counts one request in the bucket's current minute; one statement, atomic across replicas.
HIT_SQL = text(
    """
    INSERT INTO rate_limit_counters AS c (bucket, window_start, count)
    VALUES (:bucket, date_trunc('minute', now()), 1)
    ON CONFLICT (bucket, window_start) DO UPDATE SET count = c.count + 1
    RETURNING c.count, extract(epoch FROM c.window_start + interval '1 minute')::bigint
    """
)

# Forgets the bucket's finished windows (run on the first hit of a new window, so the table stays small).
PRUNE_SQL = text(
    "DELETE FROM rate_limit_counters WHERE bucket = :bucket AND window_start < date_trunc('minute', now())"
)


async def hit(session: AsyncSession, bucket: str, limit: int) -> RateWindow:
    """Count a request against `bucket` (fixed one-minute windows). The caller decides what to refuse."""
    count, reset = (await session.execute(HIT_SQL, {"bucket": bucket})).one()
    if count == 1:
        await session.execute(PRUNE_SQL, {"bucket": bucket})
    return RateWindow(limit=limit, count=int(count), reset_epoch=int(reset))


@dataclass(frozen=True)
class QuotaLimits:
    active_jobs_unverified: int = 20
    active_jobs_verified: int = 200
    daily_spend_unverified: Decimal = Decimal(1000)

    @classmethod
    def from_settings(cls, settings: Settings) -> QuotaLimits:
        return cls(
            active_jobs_unverified=settings.active_jobs_unverified,
            active_jobs_verified=settings.active_jobs_verified,
            daily_spend_unverified=Decimal(str(settings.daily_spend_unverified)),
        )


# A user's unfinished top-level jobs (a batch counts once, through its parent).
ACTIVE_JOBS_SQL = text(
    """
    SELECT count(*) FROM jobs
    WHERE user_id = :user_id AND parent_id IS NULL AND state IN ('queued', 'assigned', 'running')
    """
)

# What a user spent since midnight UTC: charges minus the refunds written today.
SPENT_TODAY_SQL = text(
    """
    SELECT COALESCE(-SUM(amount), 0) FROM transactions
    WHERE user_id = :user_id AND type IN ('charge', 'refund') AND created_at >= date_trunc('day', now())
    """
)


def _quota_error(message: str, code: str, retry_after: int) -> RateLimited:
    error = RateLimited(message, retry_after)
    error.code = code
    return error


async def check_submit_quota(
    session: AsyncSession, user: User, amount: Decimal, *, limits: QuotaLimits | None = None
) -> None:
    """Refuse a submission over the active-job limit or (unverified) the daily spending cap: 429.

    A check before the charge, not a lock: two simultaneous submissions may overshoot by one job, which a
    soft abuse limit tolerates, rather than serialising every submit of an account on one row."""
    limits = limits or QuotaLimits()
    verified = user.verification_status == "verified"
    cap = limits.active_jobs_verified if verified else limits.active_jobs_unverified
    active = int((await session.execute(ACTIVE_JOBS_SQL, {"user_id": user.id})).scalar_one())
    if active >= cap:
        hint = "" if verified else " (verify your identity to raise it)"
        raise _quota_error(
            f"Too many active jobs: {active} of {cap} allowed{hint}; wait for some to finish",
            "too_many_active_jobs",
            5,
        )
    if verified:
        return
    spent = Decimal((await session.execute(SPENT_TODAY_SQL, {"user_id": user.id})).scalar_one())
    if spent + amount > limits.daily_spend_unverified:
        now = datetime.now(UTC)
        midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        raise _quota_error(
            f"Daily spending limit reached: spent {_fmt(spent)} of {_fmt(limits.daily_spend_unverified)} "
            f"credits today, this job needs {_fmt(amount)}; verify your identity to lift the limit",
            "daily_spend_limit",
            int((midnight - now).total_seconds()) + 1,
        )


def _fmt(value: Any) -> str:
    return format(Decimal(value).normalize(), "f")
