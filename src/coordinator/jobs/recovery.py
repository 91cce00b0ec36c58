"""Leases and recovery: lost leases requeue (or dead-letter), silent assignments time out, jobs that run
past their Cargo's limit end in `timeout`. Run by an in-process sweeper and, as a backstop, by workers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.jobs import lifecycle, moves, rules, service, wiring
from coordinator.jobs import repository as sql
from coordinator.jobs.hooks import TransitionResult
from coordinator.jobs.lifecycle import Inputs
from coordinator.loops import LoopService
from coordinator.runtime import Runtime
from coordinator.telemetry import context

log = structlog.get_logger(__name__)

SWEEP_LIMIT = 200


@dataclass
class SweepOutcome:
    requeued: list[TransitionResult] = field(default_factory=list)
    dead_lettered: list[TransitionResult] = field(default_factory=list)
    timed_out: list[TransitionResult] = field(default_factory=list)
    unplaceable: list[TransitionResult] = field(default_factory=list)
    purge_hosts: set[uuid.UUID] = field(default_factory=set)

    def counts(self) -> dict[str, int]:
        return {
            "requeued": len(self.requeued),
            "dead_lettered": len(self.dead_lettered),
            "timed_out": len(self.timed_out),
            "unplaceable": len(self.unplaceable),
        }


async def _requeue_or_dead_letter(
    session: AsyncSession, row: Any, outcome: SweepOutcome, *, penalty: str | None, reason: str
) -> None:
    old_host: uuid.UUID | None = row.host_id
    if row.attempt >= row.max_attempts:
        error = f"dead-lettered after {row.attempt} attempts"
        result = await lifecycle.transition_in(
            session, moves.FAIL, row.id, Inputs(error=error, penalty=penalty)
        )
        if result is not None:
            outcome.dead_lettered.append(result)
    else:
        inputs = Inputs(host_id=old_host, attempt=row.attempt, penalty=penalty)
        result = await lifecycle.transition_in(session, moves.REQUEUE, row.id, inputs)
        if result is None:
            return
        outcome.requeued.append(result)
    if old_host is not None:
        outcome.purge_hosts.add(old_host)


async def _lost_and_silent(runtime: Runtime, outcome: SweepOutcome) -> None:
    async with runtime.db.transaction() as session:
        for row in (await session.execute(sql.EXPIRED_LEASES_SQL, {"limit": SWEEP_LIMIT})).all():
            with context.bind(job_id=row.id, host_id=row.host_id):
                await _requeue_or_dead_letter(
                    session, row, outcome, penalty="lease_expired", reason="lease_expired"
                )
    lifecycle.apply_karma(runtime, session)
    async with runtime.db.transaction() as session:
        timeout = runtime.settings.job_start_timeout_seconds
        for row in (
            await session.execute(sql.START_TIMEOUTS_SQL, {"timeout": timeout, "limit": SWEEP_LIMIT})
        ).all():
            # Not started in time: the AssignJob was lost or unparsable; no penalty, it may be ours.
            with context.bind(job_id=row.id, host_id=row.host_id):
                await _requeue_or_dead_letter(session, row, outcome, penalty=None, reason="start_timeout")


async def _overdue(runtime: Runtime, outcome: SweepOutcome) -> None:
    async with runtime.db.transaction() as session:
        for row in (await session.execute(sql.OVERDUE_SQL, {"limit": SWEEP_LIMIT})).all():
            with context.bind(job_id=row.id, host_id=row.host_id):
                error = "Timeout: job exceeded the Cargo's maximum duration"
                inputs = Inputs(error=error, penalty="timeout")
                result = await lifecycle.transition_in(session, moves.TIME_OUT, row.id, inputs)
                if result is not None:
                    outcome.timed_out.append(result)
    lifecycle.apply_karma(runtime, session)


def unplaceable_error(placement: dict[str, Any], waited_seconds: float) -> str:
    """The error of a job failed for waiting too long: the reason the dispatcher last recorded."""
    reason = placement.get("reason", "capacity")
    message = placement.get("message") or "no Island could take it"
    return f"Unplaceable ({reason}): no Island took this job within {waited_seconds:g} s. {message}"


async def _unplaceable(runtime: Runtime, outcome: SweepOutcome) -> None:
    """Queued jobs no Island could take for the configured wait: failed, with a full refund."""
    timeout = runtime.settings.job_unplaceable_timeout_seconds
    if timeout <= 0:
        return
    async with runtime.db.transaction() as session:
        rows = (await session.execute(sql.UNPLACEABLE_SQL, {"timeout": timeout, "limit": SWEEP_LIMIT})).all()
        for row in rows:
            with context.bind(job_id=row.id):
                error = unplaceable_error(row.placement or {}, timeout)
                result = await lifecycle.transition_in(session, moves.FAIL, row.id, Inputs(error=error))
                if result is not None:
                    outcome.unplaceable.append(result)


async def _after(runtime: Runtime, outcome: SweepOutcome) -> None:
    bus = runtime.bus
    if bus is not None:
        for host_id in outcome.purge_hosts:
            await wiring.best_effort(bus.purge_host_jobs(host_id), "purge_host_jobs", host_id)
    # The karma of each sweep's transaction is already in the fleet view; the moves' hooks remain
    # (CancelJob to the Island of a timed-out job among them).
    results = [*outcome.requeued, *outcome.dead_lettered, *outcome.timed_out, *outcome.unplaceable]
    await lifecycle.after_commit(runtime, None, results)


async def sweep(runtime: Runtime) -> dict[str, int]:
    """One pass over lost leases, start timeouts, overdue and unplaceable jobs; returns what it did."""
    outcome = SweepOutcome()
    await _lost_and_silent(runtime, outcome)
    await _overdue(runtime, outcome)
    await _unplaceable(runtime, outcome)
    await _after(runtime, outcome)
    counts = outcome.counts()
    if any(counts.values()):
        log.info("jobs.recovery", **counts)
    return counts


async def retry_queued(runtime: Runtime, *, waited_seconds: int = 60) -> dict[str, int]:
    """Long-waiting jobs: fail (and refund) those no Island can run any more; wake dispatchers."""
    failed: list[TransitionResult] = []
    async with runtime.db.transaction() as session:
        rows = (await session.execute(sql.STALE_QUEUED_SQL, {"age": waited_seconds, "limit": 500})).all()
        for row in rows:
            needs = service.needs_of(row, workload_id=0, region=row.region)
            fleet = runtime.fleet
            if not await service.could_ever_run(session, fleet, needs, list(row.excluded_host_ids or ())):
                error = "No Island can run this job any more: " + rules.unrunnable_reason(needs)
                result = await lifecycle.transition_in(session, moves.FAIL, row.id, Inputs(error=error))
                if result is not None:
                    failed.append(result)
    await lifecycle.after_commit(runtime, session, failed)
    bus = runtime.bus
    if rows and runtime.dispatcher is not None:
        runtime.dispatcher.wake()
    if rows and bus is not None:
        await wiring.best_effort(bus.wake_dispatchers(), "wake_dispatchers", uuid.UUID(int=0))
    return {"waiting": len(rows) - len(failed), "failed_unplaceable": len(failed)}


class LeaseSweeper(LoopService):
    """The fast in-process recovery loop (the workers are the durable backstop)."""

    name = "lease_sweeper"

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime
        self.interval = runtime.settings.lease_sweep_interval_seconds

    async def run_once(self) -> None:
        await sweep(self.runtime)
