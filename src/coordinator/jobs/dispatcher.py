"""The dispatcher: claims queued jobs, binds each to the best Island with capacity, then sends AssignJob.

Several replicas may run it at once: claims use `FOR UPDATE SKIP LOCKED`, and the candidate Islands'
rows are locked while their capacity is counted, so no Island is overfilled. The assignment commits
before the AssignJob is published; a publish that fails requeues the job (the attempt counts) or, when it
can never succeed, fails it with a refund; a crash between the two is
repaired by the start-timeout sweep (the job never reports `started` and is requeued)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.hosts.fleet import FleetView, HostView
from coordinator.jobs import lifecycle, moves, rules, service, wiring
from coordinator.jobs import repository as sql
from coordinator.jobs.assignment import assign_job_message
from coordinator.jobs.events import DISPATCHER_COMPONENT, UndeliverableAssignment
from coordinator.jobs.hooks import TransitionResult
from coordinator.protocol.codec import ProtocolError
from coordinator.protocol.messages import AssignJob
from coordinator.pubsub import pubsub_of
from coordinator.runtime import Runtime
from coordinator.supervisor import LoopService
from coordinator.telemetry import context, metrics

log = structlog.get_logger(__name__)

# How often the fleet view is topped up from the database (see `hydrate_fleet`).
HYDRATE_EVERY_SECONDS = 2.0


@dataclass(frozen=True)
class Plan:
    move: sql.AssignRow
    message: AssignJob


@dataclass(frozen=True)
class Assignment:
    job_id: uuid.UUID
    host_id: uuid.UUID
    attempt: int
    max_attempts: int
    message: AssignJob
    created_at: datetime
    result: TransitionResult


def ensure_fleet(runtime: Runtime) -> FleetView:
    fleet = service.fleet_of(runtime)
    if fleet is None:
        fleet = FleetView(heartbeat_timeout=runtime.settings.heartbeat_timeout_seconds)
        runtime.components[service.FLEET_COMPONENT] = fleet
    return fleet


def host_view_of(row: Any, last_heartbeat: float) -> HostView:
    return HostView(
        id=row.id,
        owner_id=row.owner_id,
        status=row.status,
        approved=bool(row.approved),
        region=row.region,
        platform=row.platform,
        transport=row.transport or "nats",
        gpu_model=row.gpu_model,
        gpu_vram_mb=row.gpu_vram_mb,
        cpu_cores=row.cpu_cores,
        ram_mb=row.ram_mb,
        supported_runtimes=tuple(row.supported_runtimes or ()),
        max_concurrent=max(1, int(row.max_concurrent or 1)),
        reported_active=int(row.active_jobs or 0),
        warm_workload_ids=frozenset(row.warm_workload_ids or ()),
        asking_prices={
            k: price
            for k, v in (row.asking_prices or {}).items()
            if (price := rules.parse_price(v)) is not None
        },
        rtt_ms=row.rtt_ms,
        karma=int(row.karma or 0),
        last_heartbeat_monotonic=last_heartbeat,
    )


class Dispatcher(LoopService):
    name = "dispatcher"

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime
        self.interval = runtime.settings.dispatch_interval_seconds
        self.batch_size = runtime.settings.dispatch_batch_size
        self._listening_to: FleetView | None = None
        ensure_fleet(runtime)
        self._hydrated_at = -HYDRATE_EVERY_SECONDS
        self._failed: list[TransitionResult] = []

    async def setup(self) -> None:
        self.runtime.components[DISPATCHER_COMPONENT] = self
        _ = self.fleet

    @property
    def fleet(self) -> FleetView:
        """The runtime's fleet view (looked up each time: the hosts context may install its own)."""
        fleet = ensure_fleet(self.runtime)
        if fleet is not self._listening_to:
            fleet.on_capacity(self.wake)
            self._listening_to = fleet
        return fleet

    async def run_once(self) -> None:
        if self.batch_size <= 0:  # dispatching disabled on this replica (it still serves Islands)
            return
        try:
            await self.hydrate_fleet()
            # Full batches mean more work may be waiting: keep going (bounded), else wait for a wake-up.
            for _ in range(1000):
                if await self.dispatch_batch() < self.batch_size:
                    break
        except Exception:
            # A database hiccup must not kill the loop; the next wake-up or interval retries.
            log.exception("dispatcher.pass_failed")

    async def hydrate_fleet(self) -> None:
        """Add Islands the database saw heartbeat recently but this process has not (yet): after a restart
        the in-memory view is empty until the next heartbeats. Fresher in-memory views are kept."""
        now = time.monotonic()
        if now - self._hydrated_at < HYDRATE_EVERY_SECONDS:
            return
        self._hydrated_at = now
        timeout = self.fleet.heartbeat_timeout
        async with self.runtime.db.session() as session:
            rows = (await session.execute(sql.RECENT_HOSTS_SQL, {"timeout": timeout})).all()
        added = False
        for row in rows:
            seen = self.fleet.clock() - float(row.age or 0)
            view = self.fleet.get(row.id)
            if view is not None:
                view.last_heartbeat_monotonic = max(view.last_heartbeat_monotonic, seen)
                continue
            self.fleet.put(host_view_of(row, seen))
            added = True
        if added:
            self.fleet.notify_capacity()

    def _candidates(self) -> list[HostView]:
        now = self.fleet.clock()
        timeout = self.fleet.heartbeat_timeout
        return [
            h
            for h in self.fleet
            if h.approved and not h.self_gated and h.is_live(now, timeout) and h.status != "suspended"
        ]

    async def dispatch_batch(self) -> int:
        """One claim-place-commit-publish round; returns how many jobs were assigned."""
        candidates = self._candidates()
        async with self.runtime.db.transaction() as session:
            rows = (await session.execute(sql.CLAIM_QUEUED_SQL, {"limit": self.batch_size})).all()
            if not rows:
                return 0
            hosts = await self._lock_capacity(session, candidates) if candidates else []
            surge = await service.current_surge(self.runtime, session)
            waiting: list[tuple[uuid.UUID, dict[str, Any]]] = []
            plans = [
                p for row in rows if (p := await self._plan(session, row, hosts, surge, waiting)) is not None
            ]
            assignments = await self._assign(session, plans)
            if waiting:  # say why the others still wait (client-visible `placement.reason`)
                await session.execute(sql.MARK_WAITING_SQL, sql.mark_waiting_params(waiting))
        if assignments:
            await asyncio.gather(*(self._publish(a) for a in assignments))
        failed, self._failed = self._failed, []
        await lifecycle.after_commit(self.runtime, session, failed)
        return len(assignments)

    async def _lock_capacity(self, session: AsyncSession, candidates: list[HostView]) -> list[HostView]:
        ids = [h.id for h in candidates]
        existing = {row[0] for row in await session.execute(sql.LOCK_HOSTS_SQL, {"ids": ids})}
        counts = {row[0]: int(row[1]) for row in await session.execute(sql.ACTIVE_PER_HOST_SQL, {"ids": ids})}
        hosts = [h for h in candidates if h.id in existing]
        for host in hosts:
            host.reserved = counts.get(host.id, 0)
        return hosts

    async def _plan(
        self,
        session: AsyncSession,
        row: Any,
        hosts: list[HostView],
        surge: Decimal,
        waiting: list[tuple[uuid.UUID, dict[str, Any]]],
    ) -> Plan | None:
        """Where one claimed job goes (reserving the slot for the rest of the pass), or None to leave it
        queued (with why, in `waiting`); a job no AssignJob can express is failed here."""
        needs = service.needs_of(
            row,
            workload_id=row.workload_id,
            region=row.region,
            budget=Decimal(row.budget),
            owner_id=row.user_id,
            excluded=row.excluded_host_ids,
        )
        placement = rules.choose_host(hosts, needs)
        if placement is None:
            waiting.append((row.id, rules.unplaced_reason(hosts, needs).record(needs.budget)))
            return None
        host = next(h for h in hosts if h.id == placement.host_id)
        lease_seconds = self.runtime.settings.job_lease_seconds + int(row.cold_start_seconds or 0)
        lease_expires = datetime.now(UTC) + timedelta(seconds=lease_seconds)
        try:
            message = assign_job_message(row, lease_expires, host.supported_runtimes)
        except ProtocolError as exc:
            await self._undispatchable(session, row.id, str(exc))
            return None
        host.reserved += 1
        clearing = rules.clearing_price(host, needs, surge)
        move = sql.AssignRow(row.id, host.id, lease_seconds, placement.record(clearing), clearing)
        return Plan(move, message)

    async def _assign(self, session: AsyncSession, plans: list[Plan]) -> list[Assignment]:
        """Every planned move in one guarded UPDATE; the jobs' streams are owned by this replica."""
        if not plans:
            return []
        owner = pubsub_of(self.runtime.components).replica_id
        done = {m.id: (m, r) for m, r in await lifecycle.assign_in(session, [p.move for p in plans], owner)}
        assignments = []
        for plan in plans:
            if (found := done.get(plan.move.job_id)) is None:
                continue
            moved, result = found
            assignments.append(
                Assignment(
                    moved.id,
                    plan.move.host_id,
                    moved.attempt,
                    moved.max_attempts,
                    plan.message,
                    moved.created_at,
                    result,
                )
            )
        return assignments

    async def _undispatchable(self, session: AsyncSession, job_id: uuid.UUID, reason: str) -> None:
        """A Cargo no AssignJob can express (no image, no module): fail the job now, with a refund."""
        log.error("dispatcher.undispatchable", job_id=str(job_id), reason=reason)
        inputs = lifecycle.Inputs(error=f"Cargo cannot be dispatched: {reason}")
        result = await lifecycle.transition_in(session, moves.FAIL, job_id, inputs)
        if result is not None:
            self._failed.append(result)

    async def _publish(self, assignment: Assignment) -> None:
        with context.bind(job_id=assignment.job_id, host_id=assignment.host_id):
            await self._publish_bound(assignment)

    async def _publish_bound(self, assignment: Assignment) -> None:
        bus = wiring.bus_of(self.runtime)
        try:
            if bus is None:
                raise RuntimeError("no Island bus")
            await bus.publish_assignment(
                assignment.host_id, assignment.message, f"{assignment.job_id}:{assignment.attempt}"
            )
        except Exception as exc:
            log.warning("dispatcher.publish_failed", job_id=str(assignment.job_id), error=repr(exc))
            await self._give_back(assignment, exc)
            return
        latency = max(0.0, time.time() - assignment.created_at.timestamp())
        metrics.dispatch_latency.observe(latency)
        log.info("job.assigned", attempt=assignment.attempt, dispatch_seconds=round(latency, 4))
        await lifecycle.after_commit(self.runtime, None, [assignment.result])

    async def _give_back(self, assignment: Assignment, exc: Exception) -> None:
        """A failed publish counts as an attempt: back to the queue, or failed with a full refund when the
        message can never be delivered or the attempts are used up. The sweep covers a failure here."""
        result = given_back = None
        try:
            async with self.runtime.db.transaction() as session:
                if isinstance(exc, UndeliverableAssignment) or assignment.attempt >= assignment.max_attempts:
                    error = (
                        f"assignment undeliverable: {exc}"
                        if isinstance(exc, UndeliverableAssignment)
                        else f"dead-lettered after {assignment.attempt} attempts (AssignJob publish failed)"
                    )
                    inputs = lifecycle.Inputs(host_id=assignment.host_id, error=error)
                    result = await lifecycle.transition_in(session, moves.FAIL, assignment.job_id, inputs)
                else:
                    inputs = lifecycle.Inputs(host_id=assignment.host_id, attempt=assignment.attempt)
                    given_back = await lifecycle.transition_in(
                        session, moves.GIVE_BACK, assignment.job_id, inputs
                    )
        except Exception:
            log.exception("dispatcher.give_back_failed", job_id=str(assignment.job_id))
        if result is None and given_back is None:
            self.fleet.release(assignment.host_id)  # the slot reserved for this pass, whatever happened
        await lifecycle.after_commit(self.runtime, None, [r for r in (result, given_back) if r is not None])
