"""Cargo reputation: events of finished jobs (recorded in batches), reviews and complaints, and the
hourly actions (warnings by mail, flags, demotion, promotion to L1, auto-suspension)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.loops import LoopService
from coordinator.marketplace import registry, trust
from coordinator.runtime import Runtime
from coordinator.workloads.models import Workload
from coordinator.workloads.rules import max_duration_seconds

log = structlog.get_logger(__name__)
WARN_EVERY = timedelta(hours=24)


async def record_event(session: AsyncSession, workload_id: int, event_type: str) -> Decimal | None:
    """Apply one reputation event that belongs to no job (a rating, a complaint) to a Cargo (row-locked);
    returns the new score (None for an unknown Cargo)."""
    return await record_job_events(session, workload_id, [(None, event_type)])


# ---------------------------------------------------------------- finished jobs, in batches

# Finished jobs whose reputation events are not recorded yet, oldest first (locked: one replica each).
DUE_SQL = text(
    """
    SELECT j.id, j.workload_id, j.state, j.error, w.trust_level, w.max_duration_seconds,
           EXTRACT(EPOCH FROM (j.completed_at - j.started_at)) AS seconds
    FROM jobs j JOIN workloads w ON w.id = j.workload_id
    WHERE j.reputation_at IS NULL AND j.completed_at IS NOT NULL
    ORDER BY j.completed_at
    LIMIT :limit
    FOR NO KEY UPDATE OF j SKIP LOCKED
    """
)

MARK_RECORDED_SQL = text("UPDATE jobs SET reputation_at = now() WHERE id = ANY(:ids)")

# Many events of one Cargo in one statement (a job's repeated event is a no-op: the unique partial index).
INSERT_EVENTS_SQL = text(
    """
    INSERT INTO cargo_reputation_events (workload_id, event_type, delta, score_after, job_id)
    SELECT :workload_id, * FROM unnest(CAST(:types AS text[]), CAST(:deltas AS numeric[]),
                                       CAST(:scores AS numeric[]), CAST(:job_ids AS uuid[]))
    ON CONFLICT (job_id, event_type) WHERE job_id IS NOT NULL DO NOTHING
    """
)


async def record_job_events(
    session: AsyncSession, workload_id: int, events: list[tuple[uuid.UUID | None, str]]
) -> Decimal | None:
    """Apply events (of finished jobs, or of none) to one Cargo in order, its row locked once: each
    moves the score by its delta, a 100th success in a row adds the streak bonus, a failure or timeout
    resets the streak; all stored in one INSERT (a job's repeated event is a no-op). The new score."""
    workload = await session.get(Workload, workload_id, with_for_update=True)
    if workload is None or not events:
        return None
    score, streak = Decimal(workload.reputation), workload.success_streak
    rows: list[tuple[str, Decimal, Decimal, uuid.UUID | None]] = []
    for job_id, event_type in events:
        score = trust.clamp_reputation(score + trust.REPUTATION_DELTAS[event_type])
        rows.append((event_type, trust.REPUTATION_DELTAS[event_type], score, job_id))
        if event_type == "success":
            streak += 1
            if streak % trust.STREAK_LENGTH == 0:
                score = trust.clamp_reputation(score + trust.REPUTATION_DELTAS["streak"])
                rows.append(("streak", trust.REPUTATION_DELTAS["streak"], score, None))
        elif event_type in ("failure", "timeout"):
            streak = 0
    await session.execute(
        INSERT_EVENTS_SQL,
        {
            "workload_id": workload_id,
            "types": [r[0] for r in rows],
            "deltas": [r[1] for r in rows],
            "scores": [r[2] for r in rows],
            "job_ids": [r[3] for r in rows],
        },
    )
    workload.reputation, workload.success_streak = score, streak
    await session.flush()
    return score


async def record_finished_jobs(runtime: Runtime, limit: int = 1000) -> int:
    """One batch of finished jobs: their events applied to their Cargos (each Cargo row locked once, in
    id order) and the jobs marked, in one transaction; returns how many jobs. Durable: a job finished
    before a crash is recorded by the next batch, on any replica."""
    async with runtime.db.transaction() as session:
        rows = (await session.execute(DUE_SQL, {"limit": limit})).all()
        if not rows:
            return 0
        by_cargo: dict[int, list[tuple[uuid.UUID | None, str]]] = {}
        for row in rows:
            ceiling = max_duration_seconds(int(row.trust_level), row.max_duration_seconds)
            seconds = float(row.seconds) if row.seconds is not None else None
            for event in trust.reputation_events_for_job(row.state, row.error, seconds, ceiling):
                by_cargo.setdefault(int(row.workload_id), []).append((row.id, event))
        for workload_id in sorted(by_cargo):
            await record_job_events(session, workload_id, by_cargo[workload_id])
        await session.execute(MARK_RECORDED_SQL, {"ids": [r.id for r in rows]})
    return len(rows)


class ReputationRecorder(LoopService):
    """Records the reputation events of finished jobs every `interval` seconds, in batches (the job's
    move does not wait for it, and a Cargo row is updated once per batch, not once per job)."""

    name = "reputation_recorder"
    interval = 1.0

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime

    async def run_once(self) -> None:
        while await record_finished_jobs(self.runtime) >= 1000:
            pass  # a backlog: drain it before sleeping


FACTS_SQL = text(
    """
    SELECT w.id,
      count(*) FILTER (WHERE e.event_type = 'success'
                       AND e.created_at > now() - make_interval(days => :days)) AS ok,
      count(*) FILTER (WHERE e.event_type IN ('failure', 'timeout')
                       AND e.created_at > now() - make_interval(days => :days)) AS bad,
      count(*) FILTER (WHERE e.event_type = 'complaint'
                       AND e.created_at > now() - interval '24 hours') AS c24,
      count(*) FILTER (WHERE e.event_type = 'complaint' AND e.created_at > now() - interval '7 days') AS c7
    FROM workloads w LEFT JOIN cargo_reputation_events e ON e.workload_id = w.id
    WHERE w.suspended_at IS NULL AND w.publisher_id IS NOT NULL
    GROUP BY w.id ORDER BY w.id
    """
)


async def run_hourly(runtime: Runtime) -> dict[str, Any]:
    """The Reputation worker: for each published Cargo, apply `trust.reputation_actions`."""
    done = {"warned": 0, "flagged": 0, "demoted": 0, "promoted": 0, "suspended": 0}
    async with runtime.db.session() as session:
        rows = (
            await session.execute(FACTS_SQL, {"days": runtime.settings.registry_success_window_days})
        ).all()
    for row in rows:
        async with runtime.db.transaction() as session:
            await _act(runtime, session, row, done)
    return done


async def _act(runtime: Runtime, session: AsyncSession, row: Any, done: dict[str, int]) -> None:
    workload = await session.get(Workload, int(row.id), with_for_update=True)
    if workload is None or workload.suspended_at is not None or workload.publisher_id is None:
        return
    finished = int(row.ok) + int(row.bad)
    facts = trust.ReputationFacts(
        score=Decimal(workload.reputation),
        trust_level=workload.trust_level,
        success_rate=(int(row.ok) / finished) if finished else None,
        complaints_24h=int(row.c24),
        complaints_7d=int(row.c7),
    )
    actions = trust.reputation_actions(facts)
    now = datetime.now(UTC)
    if actions.suspend:
        workload.suspended_at = now
        workload.suspension_reason = f"automatically suspended: {actions.suspend}"
        done["suspended"] += 1
        log.warning("registry.cargo_suspended", workload_id=workload.id, reason=actions.suspend)
    if actions.demote_to is not None and actions.demote_to < workload.trust_level:
        workload.trust_level = actions.demote_to
        done["demoted"] += 1
    elif workload.trust_level == 0 and not actions.suspend and not actions.warn:
        scans = await registry.latest_scans(session, workload_id=workload.id)
        trust_facts = await registry._facts(
            session, workload.publisher_id, scans, workload.id, workload.signed
        )
        if not trust.trust_blockers(1, trust_facts):
            workload.trust_level = 1
            done["promoted"] += 1
    if actions.flag and workload.flagged_at is None:
        workload.flagged_at = now
        done["flagged"] += 1
    warnings = list(actions.warn) + ([f"suspended: {actions.suspend}"] if actions.suspend else [])
    due = workload.reputation_warned_at is None or now - workload.reputation_warned_at > WARN_EVERY
    if warnings and (due or actions.suspend):
        email = await session.scalar(
            text("SELECT email FROM users WHERE id = :u"), {"u": workload.publisher_id}
        )
        if email:
            body = f"Your Cargo {workload.name} ({workload.slug}) needs attention:\n\n" + "\n".join(
                f"- {w}" for w in warnings
            )
            await runtime.mailer.send(session, str(email), f"Cargo {workload.slug}: reputation warning", body)
            workload.reputation_warned_at = now
            done["warned"] += 1
