"""Cargo reputation: events from the job lifecycle, reviews and complaints, and the hourly actions
(warnings by mail, flags, demotion, promotion to L1, auto-suspension)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.jobs.hooks import TransitionResult
from coordinator.marketplace import registry, trust
from coordinator.runtime import Runtime
from coordinator.workloads.models import Workload
from coordinator.workloads.rules import max_duration_seconds

log = structlog.get_logger(__name__)
TERMINAL = ("succeeded", "failed", "cancelled", "timeout")
WARN_EVERY = timedelta(hours=24)

# One event, once per (job, type): the unique partial index makes a repeated hook a no-op.
INSERT_EVENT_SQL = text(
    """
    INSERT INTO cargo_reputation_events (workload_id, event_type, delta, score_after, job_id)
    VALUES (:workload_id, :event_type, :delta, :score_after, :job_id)
    ON CONFLICT (job_id, event_type) WHERE job_id IS NOT NULL DO NOTHING
    RETURNING id
    """
)


async def record_event(
    session: AsyncSession, workload_id: int, event_type: str, job_id: Any = None
) -> Decimal | None:
    """Apply one reputation event to a Cargo (row-locked); returns the new score, None if already counted."""
    workload = await session.get(Workload, workload_id, with_for_update=True)
    if workload is None:
        return None
    score = trust.clamp_reputation(Decimal(workload.reputation) + trust.REPUTATION_DELTAS[event_type])
    inserted = await session.execute(
        INSERT_EVENT_SQL,
        {
            "workload_id": workload_id,
            "event_type": event_type,
            "delta": trust.REPUTATION_DELTAS[event_type],
            "score_after": score,
            "job_id": job_id,
        },
    )
    if inserted.first() is None:
        return None
    if event_type == "success":
        workload.success_streak += 1
        if workload.success_streak % trust.STREAK_LENGTH == 0:
            score = trust.clamp_reputation(score + trust.REPUTATION_DELTAS["streak"])
            await session.execute(
                INSERT_EVENT_SQL,
                {
                    "workload_id": workload_id,
                    "event_type": "streak",
                    "delta": trust.REPUTATION_DELTAS["streak"],
                    "score_after": score,
                    "job_id": None,
                },
            )
    elif event_type in ("failure", "timeout"):
        workload.success_streak = 0
    workload.reputation = score
    await session.flush()
    return score


async def on_job_transition(runtime: Runtime, result: TransitionResult) -> None:
    """After-commit job hook: a finished job's success, failure, timeout or cancel moves its Cargo."""
    if result.to_state not in TERMINAL or result.from_state is None:
        return
    async with runtime.db.transaction() as session:
        row = (
            await session.execute(
                text(
                    "SELECT EXTRACT(EPOCH FROM (j.completed_at - j.started_at)) AS seconds, "
                    "w.trust_level, w.max_duration_seconds "
                    "FROM jobs j JOIN workloads w ON w.id = j.workload_id WHERE j.id = :id"
                ),
                {"id": result.job_id},
            )
        ).first()
        if row is None:
            return
        limit = max_duration_seconds(int(row.trust_level), row.max_duration_seconds)
        seconds = float(row.seconds) if row.seconds is not None else None
        for event in trust.reputation_events_for_job(result.to_state, result.error, seconds, limit):
            await record_event(session, result.workload_id, event, result.job_id)


def job_hook(runtime: Runtime) -> Any:
    async def cargo_reputation(result: TransitionResult) -> None:
        await on_job_transition(runtime, result)

    return cargo_reputation


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
