"""Quotas: request rate per API key (counted in memory per minute and shared by every replica through
PostgreSQL), active jobs per user and the daily spending cap of unverified accounts."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.accounts.models import User
from coordinator.config import Settings
from coordinator.errors import RateLimited
from coordinator.loops import LoopService
from coordinator.repo.database import Database
from coordinator.verification import service as verification

log = structlog.get_logger(__name__)


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


# Adds each bucket's requests counted in memory since the last flush; one statement for every bucket,
# atomic across replicas; returns each bucket's total for its window.
ADD_COUNTS_SQL = text(
    """
    INSERT INTO rate_limit_counters AS c (bucket, window_start, count)
    SELECT b, to_timestamp(w), n
    FROM unnest(CAST(:buckets AS text[]), CAST(:windows AS bigint[]), CAST(:counts AS int[])) AS t(b, w, n)
    ON CONFLICT (bucket, window_start) DO UPDATE SET count = c.count + excluded.count
    RETURNING c.bucket, extract(epoch FROM c.window_start)::bigint, c.count
    """
)

# Forgets finished windows (the flush runs it once a minute, so the table stays small). Buckets of
# hour-long windows are named `h:…` (see `HOUR_PREFIX`) and kept until their hour is over.
PRUNE_SQL = text(
    """
    DELETE FROM rate_limit_counters
    WHERE window_start < now() - interval '2 minutes'
      AND (bucket NOT LIKE 'h:%' OR window_start < now() - interval '2 hours')
    """
)

WINDOW_SECONDS = 60
HOUR_SECONDS = 3600
HOUR_PREFIX = "h:"  # a bucket counted over hour-long windows carries this prefix (the prune relies on it)


@dataclass
class _Slot:
    length: int  # the window's length in seconds
    known: int = 0  # the bucket's total in PostgreSQL at the last flush (every replica's requests)
    pending: int = 0  # this replica's requests not yet added to it


class RateCounter:
    """Requests per bucket and fixed one-minute window, counted in memory and added to PostgreSQL by
    `flush` (about once a second), so a request costs no database write and replicas still share one count.

    A bucket's count is its database total at the last flush plus this replica's requests since. With one
    replica it is exact; with N, a key can overshoot by what the other replicas let through within one flush
    interval. A crash forgets at most one interval of counts (quota, not money)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._slots: dict[tuple[str, int], _Slot] = {}
        self._pruned_window = 0

    def hit(self, bucket: str, limit: int) -> RateWindow:
        """Count one request against `bucket`'s current window (an hour for `h:` buckets, else a minute).
        The caller decides what to refuse."""
        length = HOUR_SECONDS if bucket.startswith(HOUR_PREFIX) else WINDOW_SECONDS
        window = int(self.clock()) // length * length
        slot = self._slots.get((bucket, window))
        if slot is None:
            slot = self._slots[(bucket, window)] = _Slot(length)
        slot.pending += 1
        return RateWindow(limit=limit, count=slot.known + slot.pending, reset_epoch=window + length)

    def count(self, bucket: str) -> int:
        """`bucket`'s count in its current window, without counting a request."""
        length = HOUR_SECONDS if bucket.startswith(HOUR_PREFIX) else WINDOW_SECONDS
        slot = self._slots.get((bucket, int(self.clock()) // length * length))
        return 0 if slot is None else slot.known + slot.pending

    @property
    def due(self) -> bool:
        """Whether a flush has anything to do (counts to add, or a finished window to forget)."""
        current = int(self.clock()) // WINDOW_SECONDS * WINDOW_SECONDS
        return current != self._pruned_window or any(slot.pending for slot in self._slots.values())

    async def flush(self, session: AsyncSession) -> None:
        """Add the pending counts to PostgreSQL and learn each bucket's total; drop finished windows."""
        sent = [(b, w, slot.pending) for (b, w), slot in self._slots.items() if slot.pending > 0]
        if sent:
            rows = await session.execute(
                ADD_COUNTS_SQL,
                {
                    "buckets": [b for b, _, _ in sent],
                    "windows": [w for _, w, _ in sent],
                    "counts": [n for _, _, n in sent],
                },
            )
            totals = {(bucket, int(window)): int(count) for bucket, window, count in rows}
            for bucket, window, n in sent:
                slot = self._slots[(bucket, window)]
                slot.pending -= n  # requests counted while the statement ran stay pending
                slot.known = max(slot.known, totals.get((bucket, window), slot.known + n))
        now = int(self.clock())
        current = now // WINDOW_SECONDS * WINDOW_SECONDS
        for key in [k for k, slot in self._slots.items() if k[1] + slot.length <= now and not slot.pending]:
            del self._slots[key]
        if current != self._pruned_window:
            self._pruned_window = current
            await session.execute(PRUNE_SQL)


class RateCounterSync(LoopService):
    """Flushes this replica's `RateCounter` to PostgreSQL every `interval` seconds (and when draining)."""

    name = "rate-limit-sync"

    def __init__(self, db: Database, counter: RateCounter, interval: float = 1.0) -> None:
        super().__init__()
        self.db = db
        self.counter = counter
        self.interval = interval

    async def run_once(self) -> None:
        if not self.counter.due:
            return
        async with self.db.transaction() as session:
            # A count lost in a crash costs a second of quota: no need to wait for the WAL flush.
            await session.execute(text("SET LOCAL synchronous_commit TO OFF"))
            await self.counter.flush(session)

    async def teardown(self) -> None:
        """The last counts, once the loop stops."""
        try:
            await self.run_once()
        except Exception:
            log.exception("rate_limit.flush_failed")


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


# A user's unfinished top-level jobs (a batch counts once, through its parent). Each of these two queries
# is also a subquery of the submit statement (`jobs.repository.SUBMIT_SQL`).
ACTIVE_JOBS = """
    SELECT count(*) FROM jobs
    WHERE user_id = :user_id AND parent_id IS NULL AND state IN ('queued', 'assigned', 'running')
"""
ACTIVE_JOBS_SQL = text(ACTIVE_JOBS)

# What a user spent since midnight UTC: charges minus the refunds written today.
SPENT_TODAY = """
    SELECT COALESCE(-SUM(amount), 0) FROM transactions
    WHERE user_id = :user_id AND type IN ('charge', 'refund') AND created_at >= date_trunc('day', now())
"""
SPENT_TODAY_SQL = text(SPENT_TODAY)


def _quota_error(message: str, code: str, retry_after: int) -> RateLimited:
    error = RateLimited(message, retry_after)
    error.code = code
    return error


@dataclass(frozen=True)
class SubmitCaps:
    """What a submission of this user may not exceed: active top-level jobs, and (unverified accounts)
    credits spent since midnight UTC, None when the cap does not apply."""

    active_jobs: int
    daily_spend: Decimal | None


def caps_for(user: User, limits: QuotaLimits | None = None) -> SubmitCaps:
    # The verification context decides; the status is read from the row auth loaded for this request, so a
    # verification (or a revocation) changes the very next submission.
    limits = limits or QuotaLimits()
    if verification.is_verified_user(user):
        return SubmitCaps(limits.active_jobs_verified, None)
    return SubmitCaps(limits.active_jobs_unverified, limits.daily_spend_unverified)


def submit_refusal(caps: SubmitCaps, active: int, spent: Decimal, amount: Decimal) -> RateLimited | None:
    """The 429 for a submission of `amount` by an account with `active` jobs that spent `spent` today, or
    None when it is within its caps. (`jobs.repository.SUBMIT_SQL` applies the same two comparisons.)"""
    if active >= caps.active_jobs:
        hint = "" if caps.daily_spend is None else " (verify your identity to raise it)"
        return _quota_error(
            f"Too many active jobs: {active} of {caps.active_jobs} allowed{hint}; wait for some to finish",
            "too_many_active_jobs",
            5,
        )
    if caps.daily_spend is not None and spent + amount > caps.daily_spend:
        now = datetime.now(UTC)
        midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return _quota_error(
            f"Daily spending limit reached: spent {_fmt(spent)} of {_fmt(caps.daily_spend)} "
            f"credits today, this job needs {_fmt(amount)}; verify your identity to lift the limit",
            "daily_spend_limit",
            int((midnight - now).total_seconds()) + 1,
        )
    return None


async def check_submit_quota(
    session: AsyncSession, user: User, amount: Decimal, *, limits: QuotaLimits | None = None
) -> None:
    """Refuse a submission over the active-job limit or (unverified) the daily spending cap: 429.

    A check before the charge, not a lock: two simultaneous submissions may overshoot by one job, which a
    soft abuse limit tolerates, rather than serialising every submit of an account on one row."""
    caps = caps_for(user, limits)
    active = int((await session.execute(ACTIVE_JOBS_SQL, {"user_id": user.id})).scalar_one())
    spent = Decimal(0)
    if caps.daily_spend is not None and active < caps.active_jobs:
        spent = Decimal((await session.execute(SPENT_TODAY_SQL, {"user_id": user.id})).scalar_one())
    refusal = submit_refusal(caps, active, spent, amount)
    if refusal is not None:
        raise refusal


def _fmt(value: Any) -> str:
    return format(Decimal(value).normalize(), "f")
