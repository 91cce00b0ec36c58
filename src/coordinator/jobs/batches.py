"""Server-side batches (client-api §6): one parent job, N child jobs, a merged result.

The parent is a regular `jobs` row (so `GET /jobs/{id}` works for the SDKs) that is never dispatched:
it is created `running` with no Island, no lease and no charge, and it carries the batch settings in
`batch_config`. Children are ordinary paid jobs (`submit_job(parent_id=…, batch_index=i)`).

`max_parallelism` is honoured by creating children lazily: at most that many exist unfinished at once; the
other inputs wait in the parent's `batch_config.pending` and are submitted (and charged) when a running
child ends. An after-transition hook advances the batch; the parent row is locked while deciding, so
concurrent child completions on several replicas release each input once and finish the parent once."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import bindparam, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.accounts.models import User
from coordinator.billing import exchange as market
from coordinator.billing import quotas
from coordinator.errors import DomainError, InsufficientCredits, NotFound, ValidationFailed
from coordinator.jobs import lifecycle, moves, rules, service, wiring
from coordinator.jobs.batch_rules import BatchSpec, batch_state, merge_outputs, parent_outcome
from coordinator.jobs.hooks import TransitionResult
from coordinator.jobs.models import Job
from coordinator.runtime import Runtime
from coordinator.supervisor import Child as SupervisedChild
from coordinator.workloads import rules as workload_rules
from coordinator.workloads import service as workloads

log = structlog.get_logger(__name__)

BATCH_HOOK_COMPONENT = "batch_hook"

# The parent: a job row that no dispatcher claims (running, no Island, no lease), budget and charge 0.
INSERT_PARENT_SQL = text(
    """
    INSERT INTO jobs (id, user_id, workload_id, state, input, region, budget, charged, max_attempts,
                      batch_config, started_at)
    VALUES (:id, :user_id, :workload_id, 'running', :input, :region, 0, 0, 1, :batch_config, now())
    RETURNING created_at
    """
).bindparams(bindparam("input", type_=JSONB), bindparam("batch_config", type_=JSONB))

# Serialises every decision about one batch (release, finish) across replicas.
LOCK_PARENT_SQL = text(
    "SELECT id, user_id, workload_id, state, batch_config, created_at FROM jobs "
    "WHERE id = :id AND batch_config IS NOT NULL FOR UPDATE"
)

# The children of a batch, in batch order.
CHILDREN_SQL = text(
    "SELECT id, batch_index, state, error, host_id, output FROM jobs "
    "WHERE parent_id = :id ORDER BY batch_index"
)

SAVE_CONFIG_SQL = text("UPDATE jobs SET batch_config = :config WHERE id = :id").bindparams(
    bindparam("config", type_=JSONB)
)

# What a batch costs its owner so far: its children's credits_used (charge while unsettled, else what the
# settlement kept). The parent itself carries no money.
CHILDREN_CREDITS_SQL = text(
    """
    SELECT COALESCE(sum(CASE WHEN settled_at IS NULL THEN budget ELSE charged END), 0)
    FROM jobs WHERE parent_id = :id
    """
)


async def children_credits(session: AsyncSession, parent_id: uuid.UUID) -> Decimal:
    return Decimal(await session.scalar(CHILDREN_CREDITS_SQL, {"id": parent_id}) or 0)


# Which batch, if any, a job belongs to.
PARENT_OF_SQL = text("SELECT parent_id FROM jobs WHERE id = :id")


@dataclass(frozen=True)
class Child:
    id: uuid.UUID | None
    batch_index: int
    state: str
    error: str | None = None
    host_id: uuid.UUID | None = None
    output: str | None = None

    def view(self, parent_id: uuid.UUID) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": str(self.id) if self.id else f"{parent_id}-{self.batch_index}",
            "batch_index": self.batch_index,
            "state": batch_state(self.state),
        }
        if self.error:
            body["error"] = self.error
        if self.host_id:
            body["host_id"] = str(self.host_id)
        return body


# ------------------------------------------------------------------ submit


def _validate_inputs(schema: dict[str, Any] | None, inputs: list[Any]) -> None:
    errors: dict[str, list[str]] = {}
    for index, value in enumerate(inputs):
        for field, messages in workload_rules.validate_input(schema, value).items():
            errors.setdefault(f"inputs.{index}" + field.removeprefix("input"), []).extend(messages)
    if errors:
        raise ValidationFailed("Invalid input", errors)


async def submit_batch(runtime: Runtime, user: User, spec: BatchSpec) -> uuid.UUID:
    """Create the parent and the first children; nothing stays charged if a child cannot be submitted."""
    ensure_hook(runtime)
    parent_id = uuid.uuid4()
    async with runtime.db.transaction() as session:
        workload = await workloads.get_by_slug(session, spec.workload)
        _validate_inputs(workload.input_schema, spec.inputs)
        price = await market.resolve_budget(session, user.id, workload, spec.budget)
        # The batch counts as one active job (its children are not counted, see billing.quotas).
        await quotas.check_submit_quota(
            session, user, price * len(spec.inputs), limits=quotas.QuotaLimits.from_settings(runtime.settings)
        )
        balance = Decimal(await session.scalar(select(User.credits).where(User.id == user.id)) or 0)
        if balance < price * len(spec.inputs):
            raise InsufficientCredits(
                f"Insufficient credits: this batch costs {(price * len(spec.inputs)).normalize():f} "
                f"credits, your balance is {balance.normalize():f}",
                required=price * len(spec.inputs),
                available=balance,
            )
        await session.execute(
            INSERT_PARENT_SQL,
            {
                "id": parent_id,
                "user_id": user.id,
                "workload_id": workload.id,
                "input": spec.parent_input(),
                "region": spec.region,
                "batch_config": spec.config(),
            },
        )
    first = spec.inputs[: spec.parallelism]
    created: list[uuid.UUID] = []
    try:
        for index, value in enumerate(first):
            created.append((await _submit_child(runtime, user, spec, parent_id, index, value)).id)
    except DomainError:
        for child_id in created:
            await _cancel_child(runtime, child_id, "batch submission failed")
        await _finish_parent(runtime, parent_id, rules.FAILED, None, "batch submission failed")
        raise
    return parent_id


async def _submit_child(
    runtime: Runtime, user: User, spec: BatchSpec, parent_id: uuid.UUID, index: int, value: Any
) -> Job:
    return await service.submit_job(
        runtime,
        user,
        spec.workload,
        value,
        budget=spec.budget,
        region=spec.region,
        parent_id=parent_id,
        batch_index=index,
    )


# ------------------------------------------------------------------ read


async def load_batch(session: AsyncSession, user: User, batch_id: str) -> tuple[Job, str, list[Child]]:
    """The caller's batch parent, its Cargo slug and every child (created or still waiting); else 404."""
    job, slug = await service.get_job(session, user, batch_id)
    if job.batch_config is None:
        raise NotFound("Batch not found")
    rows = (await session.execute(CHILDREN_SQL, {"id": job.id})).all()
    return job, slug, children_of(job.batch_config, rows)


def children_of(config: dict[str, Any], rows: Sequence[Any]) -> list[Child]:
    children = {
        r.batch_index: Child(r.id, r.batch_index, r.state, r.error, r.host_id, r.output) for r in rows
    }
    for index, error in (config.get("failed_inputs") or {}).items():
        children.setdefault(int(index), Child(None, int(index), rules.FAILED, error))
    for index, _ in config.get("pending") or []:
        children.setdefault(int(index), Child(None, int(index), rules.QUEUED))
    for index in range(int(config.get("chunk_count", 0))):
        children.setdefault(index, Child(None, index, rules.CANCELLED))  # dropped by fail_fast / cancel
    return [children[i] for i in sorted(children)]


# ------------------------------------------------------------------ progress (after-transition hook)


def ensure_hook(runtime: Runtime) -> None:
    """Register the batch hook on this process's transitions (idempotent)."""
    if runtime.components.get(BATCH_HOOK_COMPONENT):
        return

    async def on_transition(result: TransitionResult) -> None:
        if not rules.is_terminal(result.to_state) or result.from_state is None:
            return
        async with runtime.db.read() as session:
            parent_id = await session.scalar(PARENT_OF_SQL, {"id": result.job_id})
        if parent_id is not None:
            await advance_batch(runtime, parent_id)
        elif result.to_state == rules.CANCELLED:
            await cancel_children(runtime, result.job_id)  # no-op unless it is a batch parent

    runtime.components[BATCH_HOOK_COMPONENT] = on_transition
    wiring.hooks(runtime).register(on_transition)


async def advance_batch(runtime: Runtime, parent_id: uuid.UUID) -> None:
    """After a child ended: fail fast, release waiting inputs, or merge and finish the parent."""
    release: list[tuple[int, Any]] = []
    to_cancel: list[uuid.UUID] = []
    outcome: tuple[str, str | None, str | None] | None = None
    async with runtime.db.transaction() as session:
        parent = (await session.execute(LOCK_PARENT_SQL, {"id": parent_id})).first()
        if parent is None or parent.state != rules.RUNNING:
            return
        config = dict(parent.batch_config)
        children = children_of(config, (await session.execute(CHILDREN_SQL, {"id": parent_id})).all())
        spec = BatchSpec.from_config(config)
        failed = [c for c in children if batch_state(c.state) == "failed"]
        if spec.fail_mode == "fail_fast" and failed:
            first = min(failed, key=lambda c: c.batch_index)
            to_cancel = [c.id for c in children if c.id is not None and not rules.is_terminal(c.state)]
            config["pending"] = []
            outcome = (
                rules.FAILED,
                None,
                f"batch child {first.batch_index} failed: {first.error or 'failed'}",
            )
        else:
            active = sum(1 for c in children if c.id is not None and not rules.is_terminal(c.state))
            pending = list(config.get("pending") or [])
            room = max(0, spec.parallelism - active)
            release, config["pending"] = pending[:room], pending[room:]
            if not release and all(rules.is_terminal(c.state) for c in children):
                state, error = parent_outcome([c.state for c in children])
                merged = merge_outputs(
                    [(c.output if c.state == rules.SUCCEEDED else None) for c in children],
                    spec.merge_strategy,
                )
                outcome = (state, merged, error)
        await session.execute(SAVE_CONFIG_SQL, {"id": parent_id, "config": config})
    if outcome is not None and outcome[0] == rules.FAILED and to_cancel:
        await _finish_parent(runtime, parent_id, *outcome)
        for child_id in to_cancel:
            await _cancel_child(runtime, child_id, "cancelled: another batch child failed (fail_fast)")
        return
    if outcome is not None:
        await _finish_parent(runtime, parent_id, *outcome)
    if release:
        await _release(runtime, parent, spec, release)


async def _release(runtime: Runtime, parent: Any, spec: BatchSpec, release: list[tuple[int, Any]]) -> None:
    """Submit inputs that waited for a free slot; one that cannot be submitted counts as a failed child."""
    async with runtime.db.session() as session:
        user = await session.get(User, parent.user_id)
    assert user is not None
    failures: dict[str, str] = {}
    for index, value in release:
        try:
            await _submit_child(runtime, user, spec, parent.id, int(index), value)
        except DomainError as exc:
            failures[str(index)] = exc.message
    if failures:
        async with runtime.db.transaction() as session:
            row = (await session.execute(LOCK_PARENT_SQL, {"id": parent.id})).first()
            if row is not None:
                config = dict(row.batch_config)
                config["failed_inputs"] = {**(config.get("failed_inputs") or {}), **failures}
                await session.execute(SAVE_CONFIG_SQL, {"id": parent.id, "config": config})
        await advance_batch(runtime, parent.id)


async def _finish_parent(
    runtime: Runtime, parent_id: uuid.UUID, state: str, output: str | None, error: str | None
) -> None:
    inputs = lifecycle.Inputs(output=output, error=error)
    await lifecycle.transition(runtime, moves.BATCH_CLOSE_MOVES[state], parent_id, inputs)


async def _cancel_child(runtime: Runtime, job_id: uuid.UUID, reason: str) -> None:
    """Cancel one child as the coordinator (full refund, CancelJob to its Island)."""
    await lifecycle.transition(runtime, moves.CANCEL, job_id, lifecycle.Inputs(error=reason))


async def cancel_children(runtime: Runtime, parent_id: uuid.UUID) -> int:
    """Cancelling a batch parent cancels its unfinished children and drops its waiting inputs."""
    async with runtime.db.transaction() as session:
        parent = (await session.execute(LOCK_PARENT_SQL, {"id": parent_id})).first()
        if parent is None:
            return 0
        rows = (await session.execute(CHILDREN_SQL, {"id": parent_id})).all()
        config = dict(parent.batch_config)
        config["pending"] = []
        await session.execute(SAVE_CONFIG_SQL, {"id": parent_id, "config": config})
    open_children = [r.id for r in rows if not rules.is_terminal(r.state)]
    for child_id in open_children:
        await _cancel_child(runtime, child_id, "cancelled with its batch")
    return len(open_children)


def batch_job_view(job: Job, slug: str, children: list[Child]) -> dict[str, Any]:
    """BatchJob (client-api §3.6)."""
    config = job.batch_config or {}
    states = [batch_state(c.state) for c in children]
    return {
        "id": str(job.id),
        "state": batch_state(job.state),
        "workload": slug,
        "batch": {
            "chunk_count": int(config.get("chunk_count", len(children))),
            "merge_strategy": config.get("merge_strategy", "concat"),
            "fail_mode": config.get("fail_mode", "best_effort"),
            "completed": states.count("succeeded"),
            "failed": states.count("failed"),
        },
        "children": [c.view(job.id) for c in children],
        "created_at": job.created_at.isoformat().replace("+00:00", "Z"),
    }


def batch_progress_view(job: Job, children: list[Child]) -> dict[str, Any]:
    """BatchProgress (client-api §3.7)."""
    config = job.batch_config or {}
    counts: dict[str, int] = {}
    for child in children:
        counts[batch_state(child.state)] = counts.get(batch_state(child.state), 0) + 1
    return {
        "parent_id": str(job.id),
        "parent_state": batch_state(job.state),
        "chunk_count": int(config.get("chunk_count", len(children))),
        "merge_strategy": config.get("merge_strategy", "concat"),
        "fail_mode": config.get("fail_mode", "best_effort"),
        "child_states": counts,
        "children": [c.view(job.id) for c in children],
    }


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class BatchHookChild(SupervisedChild):
    """Registers the batch hook at start, so every replica advances batches whose children end there."""

    name = "batches"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def run(self, ready: Callable[[], None]) -> None:
        ensure_hook(self.runtime)
        ready()
        await asyncio.Event().wait()
