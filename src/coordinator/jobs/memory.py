"""An in-memory `JobStore` for the lifecycle engine: the same guards (from `jobs/moves.py`) and effects on
plain objects, so the moves, guards and effect selection are tested without PostgreSQL.

It mirrors `lifecycle.PgStore` and `jobs/repository.py`, not the ledger: money is a per-user balance plus
what each Island owner earned and the platform fee, enough to check that a job is settled once and that
the budget is conserved."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from coordinator.jobs import moves, rules
from coordinator.jobs.batch_rules import BatchStep
from coordinator.jobs.lifecycle import Inputs, Moved
from coordinator.jobs.moves import Move

# The Island's share of the clearing price (the rest is the platform fee), as in billing.
ISLAND_SHARE = Decimal("0.8")


@dataclass
class MemoryJob:
    id: uuid.UUID
    user_id: int
    workload_id: int = 1
    state: str = rules.QUEUED
    host_id: uuid.UUID | None = None
    attempt: int = 0
    max_attempts: int = 3
    budget: Decimal = Decimal(1)
    clearing_price: Decimal | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    error: str | None = None
    usage: dict[str, Any] | None = None
    output: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    settled: int = 0
    excluded_host_ids: list[str] = field(default_factory=list)


@dataclass
class MemoryStore:
    """One "transaction" over in-memory jobs; effects are recorded so tests can check which ran."""

    jobs: dict[uuid.UUID, MemoryJob] = field(default_factory=dict)
    balances: dict[int, Decimal] = field(default_factory=dict)
    earned: dict[uuid.UUID, Decimal] = field(default_factory=dict)
    fees: Decimal = Decimal(0)
    karma: list[tuple[uuid.UUID, str, uuid.UUID | None]] = field(default_factory=list)
    settlements: list[tuple[uuid.UUID, str]] = field(default_factory=list)

    # ------------------------------------------------------------ setup (the submit and assign moves)

    def submit(self, user_id: int, budget: Decimal, **fields: Any) -> MemoryJob:
        """The submit move: charge the budget and queue the job (the balance may not go negative)."""
        if self.balances.get(user_id, Decimal(0)) < budget:
            raise ValueError("insufficient credits")
        self.balances[user_id] = self.balances.get(user_id, Decimal(0)) - budget
        job = MemoryJob(uuid.uuid4(), user_id, budget=budget, **fields)
        self.jobs[job.id] = job
        return job

    def assign(self, job_id: uuid.UUID, host_id: uuid.UUID, clearing_price: Decimal | None = None) -> bool:
        """The assign move's guard and update (the dispatcher's `ASSIGN_MANY_SQL`)."""
        job = self.jobs.get(job_id)
        if job is None or job.state not in moves.ASSIGN.sources or str(host_id) in job.excluded_host_ids:
            return False
        job.state, job.host_id, job.attempt = moves.ASSIGN.target, host_id, job.attempt + 1
        job.clearing_price = job.budget if clearing_price is None else min(clearing_price, job.budget)
        return True

    # ------------------------------------------------------------ JobStore

    async def apply(self, move: Move, job_id: uuid.UUID, inputs: Inputs) -> Moved | None:
        job = self.jobs.get(job_id)
        if job is None or job.state not in move.sources:
            return None
        held_by_sender = inputs.host_id is None or job.host_id == inputs.host_id
        if move.target == rules.QUEUED or move is moves.START:
            # Requeue, give-back and start name the Island (and the attempt) they apply to.
            if job.host_id != inputs.host_id:
                return None
            if inputs.attempt is not None and job.attempt != inputs.attempt:
                return None
        elif not held_by_sender:
            return None
        old = job.state
        now = datetime.now(UTC)
        if move is moves.START:
            job.started_at = job.started_at or now
        elif move.target == rules.QUEUED:
            if move is moves.REQUEUE and str(job.host_id) not in job.excluded_host_ids:
                job.excluded_host_ids.append(str(job.host_id))
            job.host_id, job.clearing_price, job.started_at = None, None, None
        else:
            job.error = inputs.error
            job.usage = inputs.usage if inputs.usage is not None else job.usage
            job.output = inputs.output if inputs.output is not None else job.output
            job.completed_at = max(now, (job.started_at or now) + timedelta(microseconds=1))
        job.state = move.target
        return Moved(
            job.id,
            job.user_id,
            job.workload_id,
            job.state,
            job.host_id,
            job.attempt,
            job.max_attempts,
            job.budget,
            job.clearing_price,
            job.created_at,
            job.error,
            job.usage,
            job.started_at,
            job.completed_at,
            old,
        )

    async def settle(self, moved: Moved, karma_success: bool) -> tuple[Decimal, Decimal | None]:
        if karma_success:
            assert moved.host_id is not None
            self.karma.append((moved.host_id, "job_succeeded", moved.id))
        job = self.jobs[moved.id]
        job.settled += 1
        self.settlements.append((moved.id, moved.state))
        if moved.state == rules.SUCCEEDED:
            price = min(moved.budget, moved.budget if moved.clearing_price is None else moved.clearing_price)
            share = (price * ISLAND_SHARE).quantize(Decimal("0.000001"))
            assert moved.host_id is not None
            self.earned[moved.host_id] = self.earned.get(moved.host_id, Decimal(0)) + share
            self.fees += price - share
            self.balances[moved.user_id] += moved.budget - price
            return price, self.balances[moved.user_id]
        self.balances[moved.user_id] += moved.budget
        return Decimal(0), self.balances[moved.user_id]

    async def roll_up(self, moved: Moved) -> BatchStep | None:
        return None  # no batches in memory

    async def penalize(self, host_id: uuid.UUID, event: str, job_id: uuid.UUID | None) -> None:
        self.karma.append((host_id, event, job_id))

    # ------------------------------------------------------------ reading

    def job(self, job_id: uuid.UUID) -> MemoryJob:
        return replace(self.jobs[job_id])
