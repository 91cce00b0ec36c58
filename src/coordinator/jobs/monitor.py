"""Read side of the jobs for the pages: a user's recent jobs of a kind, counts by state, throughput, and
a job's history."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.jobs import rules
from coordinator.jobs.models import Job, JobEvent
from coordinator.workloads.models import Workload

# How many jobs are in each state now (uses no index: a count over the table, fine at 10^5 rows).
COUNTS_BY_STATE_SQL = text("SELECT state, count(*) FROM jobs GROUP BY state")

# Jobs that finished in each of the last :minutes minutes, and their mean queue-to-assign wait (ms).
THROUGHPUT_SQL = text(
    """
    SELECT date_trunc('minute', completed_at) AS minute, count(*) AS finished,
           AVG(EXTRACT(EPOCH FROM (assigned_at - created_at)) * 1000) AS dispatch_ms
    FROM jobs
    WHERE completed_at >= now() - make_interval(mins => :minutes)
    GROUP BY minute ORDER BY minute
    """
)


@dataclass(frozen=True)
class MinuteStats:
    minute: datetime
    finished: int
    dispatch_ms: float | None


async def counts_by_state(session: AsyncSession) -> dict[str, int]:
    """Every public state with its count (0 when none)."""
    counts = {state: 0 for state in rules.STATES}
    for state, count in await session.execute(COUNTS_BY_STATE_SQL):
        counts[state] = int(count)
    return counts


async def throughput(session: AsyncSession, *, minutes: int = 60) -> list[MinuteStats]:
    rows = await session.execute(THROUGHPUT_SQL, {"minutes": minutes})
    return [MinuteStats(r[0], int(r[1]), float(r[2]) if r[2] is not None else None) for r in rows]


async def job_history(session: AsyncSession, job_id: uuid.UUID, *, limit: int = 500) -> list[dict[str, Any]]:
    """The job's stored events in order (tokens, progress, status changes, the final event)."""
    rows = await session.execute(
        select(JobEvent.position, JobEvent.event, JobEvent.created_at)
        .where(JobEvent.job_id == job_id)
        .order_by(JobEvent.position)
        .limit(limit)
    )
    return [{"position": r[0], "event": r[1], "at": r[2]} for r in rows]


async def recent_jobs_of_kind(
    session: AsyncSession, user_id: int, kind: str, *, limit: int = 20
) -> list[tuple[Job, str]]:
    """The user's latest jobs of Cargos of one kind (chat, image), newest first, with the Cargo slug."""
    rows = await session.execute(
        select(Job, Workload.slug)
        .join(Workload, Workload.id == Job.workload_id)
        .where(Job.user_id == user_id, Workload.kind == kind, Job.parent_id.is_(None))
        .order_by(Job.created_at.desc(), Job.id)
        .limit(limit)
    )
    return [(r[0], r[1]) for r in rows]


# How many token events each job streamed (a reply's length in tokens when the Island reports no usage).
TOKEN_EVENTS_SQL = text(
    """
    SELECT job_id, count(*) FROM job_events
    WHERE job_id = ANY(:job_ids) AND event->>'type' = 'token'
    GROUP BY job_id
    """
)


def _reported_tokens(job: Job) -> int | None:
    reported = (job.usage or {}).get("completion_tokens")
    if isinstance(reported, int) and not isinstance(reported, bool) and reported > 0:
        return reported
    return None


async def reply_tokens_of(session: AsyncSession, jobs: list[Job]) -> dict[uuid.UUID, int]:
    """Each job's completion tokens as its Island reported them, else as many as it streamed (one query
    for all the jobs that need counting)."""
    counts = {job.id: n for job in jobs if (n := _reported_tokens(job)) is not None}
    missing = [job.id for job in jobs if job.id not in counts]
    if missing:
        rows = await session.execute(TOKEN_EVENTS_SQL, {"job_ids": missing})
        streamed = {row[0]: int(row[1]) for row in rows}
        counts.update({job_id: streamed.get(job_id, 0) for job_id in missing})
    return counts


async def reply_tokens(session: AsyncSession, job: Job) -> int:
    return (await reply_tokens_of(session, [job]))[job.id]
