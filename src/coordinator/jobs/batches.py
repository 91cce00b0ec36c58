"""Server-side batches (client-api §6): one parent job, N child jobs, a merged result.

The parent is a regular `jobs` row (so `GET /jobs/{id}` works for the SDKs) that is never dispatched:
it is created `running` with no Island, no lease and no charge, and it carries the batch settings in
`batch_config`. Children are ordinary paid jobs (`submit_job(parent_id=…, batch_index=i)`).

`max_parallelism` is honoured by creating children lazily: at most that many exist unfinished at once; the
other inputs wait in the parent's `batch_config.pending` and are submitted (and charged) when a running
child ends. The decision is the lifecycle's `roll_up_batch` effect (`jobs/batch_rollup.py`), in the
transaction of the child's end with the parent row locked, so concurrent child completions on several
replicas release each input once and close the parent once; the `advance_batch` hook (`advance`, below)
then submits the released inputs and cancels the dropped children."""

from __future__ import annotations

import json
import uuid
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
from coordinator.jobs import batch_rollup, lifecycle, moves, rules, service
from coordinator.jobs.batch_rules import BatchSpec, BatchStep, Child, batch_state, children_of
from coordinator.jobs.hooks import Hook, TransitionResult
from coordinator.jobs.models import Job
from coordinator.runtime import Runtime
from coordinator.workloads import rules as workload_rules
from coordinator.workloads import service as workloads

log = structlog.get_logger(__name__)

# The parent: a job row that no dispatcher claims (running, no Island, no lease), budget and charge 0.
INSERT_PARENT_SQL = text(
    """
    INSERT INTO jobs (id, user_id, workload_id, state, input, region, budget, charged, max_attempts,
                      batch_config, started_at)
    VALUES (:id, :user_id, :workload_id, 'running', :input, :region, 0, 0, 1, :batch_config, now())
    RETURNING created_at
    """
).bindparams(bindparam("input", type_=JSONB), bindparam("batch_config", type_=JSONB))

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
        # The parent first: its children's cancels then release nothing.
        await _finish_parent(runtime, parent_id, rules.FAILED, None, "batch submission failed")
        for child_id in created:
            await _cancel_child(runtime, child_id, "batch submission failed")
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
    rows = (await session.execute(batch_rollup.CHILDREN_SQL, {"id": job.id})).all()
    return job, slug, children_of(job.batch_config, rows)


# ------------------------------------------------------------------ after a roll-up (the advance_batch hook)


async def advance(runtime: Runtime, step: BatchStep) -> None:
    """After the transaction that rolled the batch up: cancel the children it dropped, submit the inputs
    it released (one that cannot be submitted counts as a failed child, and the batch rolls up again)."""
    for child_id in step.cancel:
        await _cancel_child(runtime, child_id, step.cancel_reason)
    if not step.release:
        return
    async with runtime.db.session() as session:
        user = await session.get(User, step.user_id)
    assert user is not None
    failures: dict[str, str] = {}
    for index, value in step.release:
        try:
            await _submit_child(runtime, user, step.spec, step.parent_id, index, value)
        except DomainError as exc:
            failures[str(index)] = exc.message
    if failures:
        await _record_failures(runtime, step.parent_id, failures)


def advance_hook(runtime: Runtime) -> Hook:
    """The `advance_batch` hook: a move whose roll-up left a next step runs it after commit."""

    async def advance_batch(result: TransitionResult) -> None:
        if result.batch is not None:
            await advance(runtime, result.batch)

    return advance_batch


async def _record_failures(runtime: Runtime, parent_id: uuid.UUID, failures: dict[str, str]) -> None:
    async with runtime.db.transaction() as session:
        row = (await session.execute(batch_rollup.LOCK_PARENT_SQL, {"id": parent_id})).first()
        if row is None:
            return
        config = dict(row.batch_config)
        config["failed_inputs"] = {**(config.get("failed_inputs") or {}), **failures}
        await session.execute(batch_rollup.SAVE_CONFIG_SQL, {"id": parent_id, "config": config})
        step = await batch_rollup.child_ended(session, parent_id)
        closed = await lifecycle.close_batch_in(session, step)
    await lifecycle.after_commit(runtime, session, [] if closed is None else [closed])
    if step is not None:
        await advance(runtime, step)


async def _finish_parent(
    runtime: Runtime, parent_id: uuid.UUID, state: str, output: str | None, error: str | None
) -> None:
    inputs = lifecycle.Inputs(output=output, error=error)
    await lifecycle.transition(runtime, moves.BATCH_CLOSE_MOVES[state], parent_id, inputs)


async def _cancel_child(runtime: Runtime, job_id: uuid.UUID, reason: str) -> None:
    """Cancel one child as the coordinator (full refund, CancelJob to its Island)."""
    await lifecycle.transition(runtime, moves.CANCEL, job_id, lifecycle.Inputs(error=reason))


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
