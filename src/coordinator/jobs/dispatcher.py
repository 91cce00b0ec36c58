"""The dispatcher: claims queued jobs, binds each to the best Island with capacity, then sends AssignJob.

Several replicas may run it at once: claims use `FOR NO KEY UPDATE SKIP LOCKED`, and the candidate
Islands' rows are locked while their capacity is counted, so no Island is overfilled. The assignment commits
before the AssignJob is published; a publish that fails requeues the job (the attempt counts) or, when it
can never succeed, fails it with a refund; a crash between the two is
repaired by the start-timeout sweep (the job never reports `started` and is requeued).

A submit alone on its replica, with nothing queued, places its own job with the same functions and assigns
it in its own transaction (`plan_at_submit`; `jobs.service.submit`): no pass for an idle queue."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog

from coordinator.hosts import service as host_service
from coordinator.hosts.fleet import FleetView, HostView
from coordinator.jobs import lifecycle, moves, rules, service
from coordinator.jobs import repository as sql
from coordinator.jobs.assignment import assign_job_message
from coordinator.jobs.events import UndeliverableAssignment
from coordinator.jobs.hooks import TransitionResult
from coordinator.loops import LoopService
from coordinator.protocol.codec import ProtocolError
from coordinator.protocol.messages import AssignJob
from coordinator.repo.raw import Sql
from coordinator.runtime import Runtime
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
    placement: dict[str, Any] | None = None


QUEUE_EMPTY, QUEUE_UNKNOWN, QUEUE_ENTERED = "empty", "unknown", "entered"


class Dispatcher(LoopService):
    name = "dispatcher"

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime
        self.interval = runtime.settings.dispatch_interval_seconds
        self.batch_size = runtime.settings.dispatch_batch_size
        self.at_submit = self.batch_size > 0 and runtime.settings.assign_at_submit
        runtime.fleet.on_capacity(self._capacity_freed)
        self._hydrated_at = -HYDRATE_EVERY_SECONDS
        self._ranked_at = -self.interval  # the last claim by rank (not only the jobs just entered)
        self._failed: list[TransitionResult] = []
        # What this replica knows of the queue. EMPTY: the last look found nothing queued and nothing
        # entered since, so a freed slot has nothing to take. ENTERED: a job entered since the last claim
        # (each entry, here or on another replica, calls `wake`), so the next pass claims without the probe
        # (which saves a transaction when nothing waits and is a wasted statement when something does).
        self._queue = QUEUE_UNKNOWN
        self._submits = 0  # submits in flight on this replica (`submitting`)

    def wake(self) -> None:
        """Jobs entered the queue: run a pass now."""
        self._queue = QUEUE_ENTERED
        super().wake()

    def _capacity_freed(self) -> None:
        """An Island has room again: worth a pass only if jobs may be waiting (saves the probe per finished
        job of an idle queue). The interval pass looks regardless."""
        if self._queue != QUEUE_EMPTY:
            super().wake()

    def _looked(self, empty: bool) -> None:
        """What a probe or a pass found, unless a job entered the queue meanwhile."""
        if self._queue != QUEUE_ENTERED:
            self._queue = QUEUE_EMPTY if empty else QUEUE_UNKNOWN

    async def setup(self) -> None:
        self.runtime.dispatcher = self

    @property
    def fleet(self) -> FleetView:
        return self.runtime.fleet

    async def run_once(self) -> None:
        if self.batch_size <= 0:  # dispatching disabled on this replica (it still serves Islands)
            return
        # (A database hiccup fails this pass only: the loop logs it; the next wake-up or interval retries.)
        await self.hydrate_fleet()
        # Full batches mean more work may be waiting: keep going (bounded), else wait for a wake-up.
        for _ in range(1000):
            if await self.dispatch_batch() < self.batch_size:
                break

    async def hydrate_fleet(self) -> None:
        """Top the fleet view up from the database every couple of seconds (`hosts.service.hydrate_fleet`)."""
        now = time.monotonic()
        if now - self._hydrated_at < HYDRATE_EVERY_SECONDS:
            return
        self._hydrated_at = now
        async with self.runtime.db.session() as session:
            added = await host_service.hydrate_fleet(session, self.fleet)
        if added:
            self.fleet.notify_capacity()

    async def dispatch_batch(self) -> int:
        """One claim-place-commit-publish round; returns how many jobs were assigned."""
        entered = self._queue == QUEUE_ENTERED
        if not entered:
            async with self.runtime.db.raw_statement() as session:
                self._looked(empty=(await session.execute(sql.ANY_QUEUED_SQL)).scalar() is not True)
            if self._queue == QUEUE_EMPTY:
                return 0
        self._queue = QUEUE_UNKNOWN
        candidates = self.fleet.candidates()
        # Woken by new jobs while every Island is full (by this replica's view): only the new ones are
        # claimed, to say why they wait. (With a backlog, each submit re-placing a whole batch that cannot
        # move made every submit cost a batch.) A freed slot, and at least one pass per interval, claim by
        # rank (which also renews the waiting jobs' reasons).
        now = time.monotonic()
        fresh_only = (
            entered
            and now - self._ranked_at < self.interval
            and not any(h.free_slots > 0 for h in candidates)
        )
        if not fresh_only:
            self._ranked_at = now
        async with self.runtime.db.read() as read:  # no connection while the counts are cached
            surge = await self.runtime.surge.current(read)
        async with self.runtime.db.raw_transaction() as session:
            assignments = await self._place_in(session, candidates, surge, fresh_only)
            if assignments is None:
                return 0
        if assignments:
            await asyncio.gather(*(self._publish(a) for a in assignments))
        failed, self._failed = self._failed, []
        await lifecycle.after_commit(self.runtime, session, failed)
        return len(assignments)

    async def _place_in(
        self, session: Sql, candidates: list[HostView], surge: Decimal, fresh_only: bool
    ) -> list[Assignment] | None:
        """Claim, place and assign inside the pass's transaction; None when the claim found nothing."""
        ids = [h.id for h in candidates]
        params = {"limit": self.batch_size, "island_ids": ids, "fresh_only": fresh_only}
        rows = (await session.execute(sql.CLAIM_QUEUED_SQL, params)).all()
        if not rows:
            return None
        locked = set(rows[0].locked_islands)
        hosts = [h for h in candidates if h.id in locked]
        plans, waiting = await self._plan_all(session, rows, hosts, surge)
        if waiting and hosts and not await self._view_was_right(session, hosts, plans):
            # This replica's view of the Islands' load was behind (their jobs ended on another replica): it
            # is the count now. Place again, by rank among every queued job.
            if fresh_only:
                return await self._place_in(session, candidates, surge, fresh_only=False)
            plans, waiting = await self._plan_all(session, rows, hosts, surge)
        assignments = await self._assign(session, plans, hosts)
        # Every job the claim saw is placed and it saw fewer than it could take: nothing waits now.
        self._looked(empty=not fresh_only and len(rows) < self.batch_size and len(assignments) == len(rows))
        if waiting:  # say why the others still wait (client-visible `placement.reason`)
            await session.execute(sql.MARK_WAITING_SQL, sql.mark_waiting_params(waiting))
        return assignments

    async def _active_counts(self, session: Sql, hosts: list[HostView]) -> dict[uuid.UUID, int]:
        """The locked Islands' counts of unfinished jobs (read after the locks: what another replica
        assigned them is committed; what this pass assigned is included)."""
        params = {"ids": [h.id for h in hosts]}
        return {row[0]: int(row[1]) for row in await session.execute(sql.ACTIVE_PER_HOST_SQL, params)}

    async def _count_capacity(self, session: Sql, hosts: list[HostView]) -> None:
        """Set the locked Islands' reserved slots to their counts of unfinished jobs."""
        self.fleet.count_reserved(hosts, await self._active_counts(session, hosts))

    async def _view_was_right(self, session: Sql, hosts: list[HostView], plans: list[Plan]) -> bool:
        """Whether the Islands' reserved slots, this pass's plans included, match the database's count;
        if not, they are set to the count (the plans undone)."""
        counts = await self._active_counts(session, hosts)
        planned = collections.Counter(p.move.host_id for p in plans)
        if all(h.reserved == counts.get(h.id, 0) + planned[h.id] for h in hosts):
            return True
        self.fleet.count_reserved(hosts, counts)
        return False

    async def _plan_all(
        self, session: Sql, rows: Sequence[Any], hosts: list[HostView], surge: Decimal
    ) -> tuple[list[Plan], list[tuple[uuid.UUID, dict[str, Any]]]]:
        """The plans of the claimed jobs this pass can place, and why the others wait."""
        waiting: list[tuple[uuid.UUID, dict[str, Any]]] = []
        failed = {result.job_id for result in self._failed}  # failed by a first look of this pass
        plans = [
            p
            for row in rows
            if row.id not in failed
            and (p := await self._plan(session, row, hosts, surge, waiting)) is not None
        ]
        return plans, waiting

    async def _plan(
        self,
        session: Sql,
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
        try:
            return self._plan_on(row, needs, placement, hosts, surge)
        except ProtocolError as exc:
            await self._undispatchable(session, row.id, str(exc))
            return None

    def _plan_on(
        self,
        row: Any,
        needs: rules.JobNeeds,
        placement: rules.Placement,
        hosts: list[HostView],
        surge: Decimal,
    ) -> Plan | None:
        """The move and the AssignJob of a job `choose_host` placed, its slot reserved in the fleet view;
        None when the Island left the view meanwhile. Raises `ProtocolError` for a Cargo no AssignJob can
        express."""
        host = next(h for h in hosts if h.id == placement.host_id)
        lease_seconds = self.runtime.settings.job_lease_seconds + int(row.cold_start_seconds or 0)
        lease_expires = datetime.now(UTC) + timedelta(seconds=lease_seconds)
        message = assign_job_message(row, lease_expires, host.supported_runtimes)
        if not self.fleet.reserve(host.id):  # it left the fleet view meanwhile: the next pass places the job
            return None
        clearing = rules.clearing_price(host, needs, surge)
        move = sql.AssignRow(
            row.id, host.id, lease_seconds, placement.record(clearing), clearing, host.max_concurrent
        )
        return Plan(move, message)

    # ------------------------------------------------------------ assignment in the submit's transaction

    @contextlib.contextmanager
    def submitting(self) -> Iterator[bool]:
        """Around a submit: whether it is the only one in flight on this replica. Only such a submit
        assigns its own job: with others in flight one pass places them all in two statements, and a
        hot account's balance row is not held for an assignment while its other submits queue on it."""
        self._submits += 1
        try:
            yield self._submits == 1
        finally:
            self._submits -= 1

    async def plan_at_submit(self, row: Any, needs: rules.JobNeeds) -> Plan | None:
        """Where a job about to be submitted goes at once: an Island of the fleet view with a free slot,
        when this replica's last look found the queue empty and nothing entered it since (a job waiting
        would be passed over; `SUBMIT_AND_LOCK_SQL` checks the database's queue too). The slot is
        reserved; the submit's transaction assigns it (`assign_at_submit`) or gives it back. `row`: the
        job as it will be inserted, with its Cargo's columns (what `assign_job_message` reads)."""
        if not self.at_submit or self._queue != QUEUE_EMPTY:
            return None
        hosts = self.fleet.candidates()
        placement = rules.choose_host(hosts, needs)
        if placement is None:
            return None
        async with self.runtime.db.read() as read:  # no connection while the counts are cached
            surge = await self.runtime.surge.current(read, entering=1)  # this job is demand too
        try:
            return self._plan_on(row, needs, placement, hosts, surge)
        except ProtocolError:
            return None  # the dispatcher fails such a job, with its reason

    async def assign_at_submit(self, session: Sql, plan: Plan, locked: bool) -> Assignment | None:
        """The planned assignment, in the submit's transaction after `SUBMIT_SQL` (`locked`: it locked the
        Island's row and priced the job as planned); None, the slot given back, when it was not made (not
        locked: the row was locked elsewhere, a job was ahead, a saved bid priced the job otherwise; or no
        slot by the database's count)."""
        host = self.fleet.get(plan.move.host_id)
        if not locked or host is None:
            self.abandon(plan)
            return None
        assigned = await self._assign(session, [plan], [host])  # a slot found taken is undone there
        return assigned[0] if assigned else None

    def abandon(self, plan: Plan) -> None:
        """A plan the submit did not use (refused, failed): its reserved slot is free again."""
        self.fleet.unreserve(plan.move.host_id)

    async def publish_assigned(self, assignment: Assignment) -> None:
        """AssignJob for an assignment made outside a pass (the submit's), then its hooks."""
        await self._publish(assignment)

    async def _assign(self, session: Sql, plans: list[Plan], hosts: list[HostView]) -> list[Assignment]:
        """Every planned move in one guarded UPDATE that also checks each Island's slots against the
        database (the plans used this replica's view); the jobs' streams are owned by this replica. The
        locked Islands' reserved slots are the database's count afterwards."""
        if not plans:
            return []
        owner = self.runtime.pubsub.replica_id
        pairs, active = await lifecycle.assign_in(
            session, [p.move for p in plans], owner, [h.id for h in hosts]
        )
        done = {m.id: (m, r) for m, r in pairs}
        if active is not None and len(done) == len(plans):
            planned = collections.Counter(p.move.host_id for p in plans)
            self.fleet.count_reserved(hosts, {h.id: active.get(h.id, 0) + planned[h.id] for h in hosts})
        else:  # some found no slot: the view was short of the truth; it is the count now
            await self._count_capacity(session, hosts)
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
                    plan.move.placement,
                )
            )
        return assignments

    async def _undispatchable(self, session: Sql, job_id: uuid.UUID, reason: str) -> None:
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
        bus = self.runtime.bus
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
