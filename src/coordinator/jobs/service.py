"""The jobs context's public API: submit (quote + charge), read and cancel; moves go through `lifecycle`."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.accounts.models import User
from coordinator.billing import exchange as market
from coordinator.billing import quotas
from coordinator.billing.exchange_rules import money
from coordinator.errors import Conflict, InsufficientCredits, NotFound, ValidationFailed
from coordinator.hosts.fleet import FleetView, view_of
from coordinator.jobs import lifecycle, moves, rules
from coordinator.jobs import repository as sql
from coordinator.jobs.models import Job
from coordinator.jobs.output import accumulator_of
from coordinator.runtime import Runtime
from coordinator.telemetry import context, metrics
from coordinator.workloads import rules as workload_rules
from coordinator.workloads.catalogue import Cargo
from coordinator.workloads.models import Workload

if TYPE_CHECKING:
    from coordinator.jobs.dispatcher import Assignment, Plan

log = structlog.get_logger(__name__)

# ---------------------------------------------------------------- submit


def needs_of(
    cargo: Any,
    *,
    workload_id: int,
    region: str | None,
    budget: Decimal = Decimal(0),
    owner_id: int | None = None,
    excluded: Sequence[str] | None = None,
) -> rules.JobNeeds:
    """A job's placement needs. `cargo` is its `Workload` or a row carrying the Cargo's columns: runtime
    and requirements always; slug, kind, platforms and base price where the caller has them."""
    return rules.JobNeeds(
        workload_id=workload_id,
        slug=getattr(cargo, "slug", ""),
        runtime=cargo.runtime,
        kind=getattr(cargo, "kind", None) or "generic",
        required_ram_mb=cargo.required_ram_mb or 0,
        required_vram_mb=cargo.required_vram_mb or 0,
        required_cpu_cores=cargo.required_cpu_cores or 0,
        platforms=tuple(getattr(cargo, "platforms", None) or ()),
        region=region,
        budget=budget,
        price_per_job=Decimal(getattr(cargo, "price_per_job", None) or 0),
        owner_id=owner_id,
        excluded_host_ids=frozenset(excluded or ()),
    )


async def could_ever_run(
    session: AsyncSession, fleet: FleetView | None, needs: rules.JobNeeds, excluded: Sequence[str] = ()
) -> bool:
    """Whether any known Island (in the live fleet, else in the database) passes `rules.could_run`."""
    if excluded:
        needs = dataclasses.replace(needs, excluded_host_ids=needs.excluded_host_ids | frozenset(excluded))
    if fleet is not None and any(rules.could_run(host, needs) for host in fleet):
        return True
    rows = await session.execute(
        sql.CAPABLE_HOSTS_SQL,
        {
            "ram": needs.required_ram_mb,
            "vram": needs.required_vram_mb,
            "cores": needs.required_cpu_cores,
            "region": needs.region,
            "excluded": list(needs.excluded_host_ids),
        },
    )
    return any(rules.could_run(view_of(row), needs) for row in rows)


def raised_to_supply(fleet: FleetView | None, needs: rules.JobNeeds, default: Decimal) -> Decimal:
    """A default budget the supply online now can meet: the market rate (or base price) raised to the
    lowest ask of the live Islands that could run the job. (A saved bid is a cap the user chose and, in
    `SUBMIT_SQL`, wins over this default: the job then waits with `placement.reason: price`.)"""
    if fleet is None:
        return default
    now = fleet.clock()
    lowest = rules.lowest_live_ask((h for h in fleet if h.is_live(now, fleet.heartbeat_timeout)), needs)
    return default if lowest is None or lowest <= default else lowest


def _check_submission(cargo: Cargo, input: Any, priority: int, region: str | None) -> None:
    if cargo.suspended_at is not None:
        raise ValidationFailed("Cargo is suspended", {"workload": ["is suspended"]})
    if not cargo.is_enabled:
        raise ValidationFailed("Cargo is not available", {"workload": ["is disabled"]})
    errors = workload_rules.validate_input(cargo.input_schema, input)
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not (rules.PRIORITY_MIN <= priority <= rules.PRIORITY_MAX)
    ):
        errors["priority"] = ["must be an integer from 0 to 100"]
    if region is not None and (not isinstance(region, str) or not 0 < len(region) <= 50):
        errors["region"] = ["must be a region name of at most 50 characters"]
    if errors:
        raise ValidationFailed("Invalid input", errors)


async def _default_price(
    runtime: Runtime, user: User, cargo: Cargo, input: Any, priority: int, region: str | None
) -> tuple[Decimal, rules.JobNeeds]:
    """Check the submission against `cargo` (422 when it cannot be run as asked) and return the budget a
    job without its own or a saved bid gets, and the job's placement needs (without a budget)."""
    _check_submission(cargo, input, priority, region)
    async with runtime.db.read() as session:  # no connection unless a statement below runs
        default = await market.default_budget(
            session,
            cargo.id,
            cargo.price_per_job,
            markup=Decimal(str(runtime.settings.market_rate_markup)),
            window_minutes=runtime.settings.market_rate_window_minutes,
            rates=runtime.market_rates,
        )
        needs = needs_of(cargo, workload_id=cargo.id, region=region, owner_id=user.id)
        if not await could_ever_run(session, runtime.fleet, needs):
            reason = rules.unrunnable_reason(needs)
            raise ValidationFailed(reason, {"workload": [reason]})
    return raised_to_supply(runtime.fleet, needs, default), needs


@dataclasses.dataclass(frozen=True, slots=True)
class _Submitted:
    """The job about to be inserted, read as the dispatcher's claim returns a row (what an AssignJob is
    built from): its own id and input, every other column its Cargo's."""

    id: uuid.UUID
    input: Any
    cargo: Cargo

    @property
    def workload_id(self) -> int:
        return self.cargo.id

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cargo, name)


async def _store(
    runtime: Runtime, plan: Plan | None, params: dict[str, Any], budget: Decimal
) -> tuple[Any, Assignment | None]:
    """The submit statement's row, alone or with the planned assignment in the same transaction (and the
    assignment when it was made: the plan's slot is given back otherwise). A transaction that fails is
    rolled back whole and the submit is made again alone: a doubtful assignment never costs the job."""
    dispatcher = runtime.dispatcher
    if plan is not None and dispatcher is not None:
        given_back = False
        try:
            async with runtime.db.raw_transaction() as session:
                row = (await session.execute(sql.SUBMIT_AND_LOCK_SQL, params)).one()
                locked = row.direct_host is not None and Decimal(row.price) == budget
                assignment = await dispatcher.assign_at_submit(session, plan, locked)
                given_back = assignment is None
            return row, assignment
        except BaseException as exc:
            if not given_back:
                dispatcher.abandon(plan)
            if not isinstance(exc, DBAPIError):
                raise
            log.warning("job.assign_at_submit_failed", job_id=str(params["id"]), error=repr(exc))
    async with runtime.db.raw_statement() as session:
        return (await session.execute(sql.SUBMIT_SQL, params)).one(), None


@dataclasses.dataclass(frozen=True, slots=True)
class Submitted:
    job: Job
    queue_position: int  # 1-based, when the job was inserted


async def submit(
    runtime: Runtime,
    user: User,
    workload_slug: str,
    input: Any,
    *,
    priority: int = 0,
    budget: Decimal | str | float | None = None,
    region: str | None = None,
    parent_id: uuid.UUID | None = None,
    batch_index: int | None = None,
) -> Submitted:
    """Validate, quote and charge, and insert the job as `queued`: one statement (`SUBMIT_SQL`) once the
    Cargo is in the catalogue cache. A submit alone on its replica that finds nothing queued and an
    Island with a free slot assigns the job in the same transaction (`Dispatcher.plan_at_submit`: a second
    statement) and the AssignJob is sent before this returns. Refusals: 404 unknown Cargo, 422 invalid,
    402 credits, 429 quota."""
    bid: Decimal | None = None
    if budget is not None:
        bid = rules.parse_budget(budget)
        if bid is None:
            raise ValidationFailed("Invalid input", {"budget": ["must be a positive amount of credits"]})
        bid = money(bid)
    caps = quotas.caps_for(user, quotas.QuotaLimits.from_settings(runtime.settings))
    top_level = parent_id is None  # a batch counts once, through its parent
    job_id = uuid.uuid4()
    cargo = runtime.catalogue.cached(workload_slug)
    dispatcher = runtime.dispatcher
    assignment: Assignment | None = None
    # Only a submit alone on this replica may assign its own job (`Dispatcher.submitting`).
    alone_here = contextlib.nullcontext(False) if dispatcher is None else dispatcher.submitting()
    with alone_here as alone:
        for _ in range(3):  # a Cargo changed under a cached copy: read it again and redo (twice is plenty)
            fresh = cargo is None
            if cargo is None:
                cargo = await runtime.catalogue.load(runtime.db, workload_slug)
            try:
                default, needs = await _default_price(runtime, user, cargo, input, priority, region)
            except ValidationFailed:
                if fresh:
                    raise
                cargo = None  # a refusal is never made on a cached copy alone
                continue
            # An idle Island with a free slot and nothing queued: the job is assigned in this transaction.
            needs = dataclasses.replace(needs, budget=default if bid is None else bid)
            plan = None
            if dispatcher is not None and alone:
                plan = await dispatcher.plan_at_submit(_Submitted(job_id, input, cargo), needs)
            params = {
                "id": job_id,
                "key": f"charge:{job_id}",
                "user_id": user.id,
                "workload_id": cargo.id,
                "revision": cargo.revision,
                "explicit": bid,
                "default": default,
                "active_cap": caps.active_jobs if top_level else None,
                "daily_cap": caps.daily_spend if top_level else None,
                "input": input,
                "priority": priority,
                "region": region,
                "max_attempts": runtime.settings.job_max_attempts,
                "parent_id": parent_id,
                "batch_index": batch_index,
            }
            if plan is not None:
                params["direct_host"] = plan.move.host_id
            row, assignment = await _store(runtime, plan, params, needs.budget)
            if row.outcome != "stale":
                break
            cargo = None
        else:
            raise Conflict("The Cargo is being changed; try again")
    price = Decimal(row.price)
    if row.outcome == "quota":
        raise quotas.submit_refusal(caps, int(row.active), Decimal(row.spent), price) or Conflict(
            "Quota check disagreement; try again"  # SUBMIT_SQL and submit_refusal apply one rule
        )
    if row.outcome == "insufficient":
        available = Decimal(row.available or 0)
        raise InsufficientCredits(
            f"Insufficient credits: this job costs {price.normalize():f} credits, "
            f"your balance is {available.normalize():f}",
            required=price,
            available=available,
        )
    balance, created_at = Decimal(row.balance), row.created_at
    metrics.credits_moved.labels(type="charge").inc(float(price))
    with context.bind(job_id=job_id, workload_id=cargo.id, user_id=user.id):
        log.info("job.submitted", workload=cargo.slug, priority=priority, budget=str(price))
        metrics.jobs_submitted.labels(workload=cargo.slug).inc()
        submitted = lifecycle.submitted(
            job_id, user.id, cargo.id, created_at, balance, placed=assignment is not None
        )
        await lifecycle.after_commit(runtime, None, [submitted])
    if assignment is not None:
        assert dispatcher is not None
        metrics.assigned_at_submit.inc()
        await dispatcher.publish_assigned(assignment)
    # The row as this transaction left it, without reading it back (submit is a hot path).
    job = Job(
        id=job_id,
        user_id=user.id,
        workload_id=cargo.id,
        state=rules.QUEUED if assignment is None else rules.ASSIGNED,
        input=input,
        output=None,
        error=None,
        priority=priority,
        host_id=None if assignment is None else assignment.host_id,
        attempt=0 if assignment is None else assignment.attempt,
        max_attempts=runtime.settings.job_max_attempts,
        region=region,
        budget=price,
        charged=price,
        refunded=Decimal(0),
        usage=None,
        placement=None if assignment is None else assignment.placement,
        parent_id=parent_id,
        batch_index=batch_index,
        started_at=None,
        completed_at=None,
        settled_at=None,
        created_at=created_at,
        updated_at=created_at,
    )
    return Submitted(job, int(row.ahead) + 1)


async def submit_job(runtime: Runtime, user: User, workload_slug: str, input: Any, **options: Any) -> Job:
    """`submit`, for callers that do not show a queue position."""
    return (await submit(runtime, user, workload_slug, input, **options)).job


# ---------------------------------------------------------------- read


def parse_job_id(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except (ValueError, AttributeError):
        return None


def job_id_or_404(value: str) -> uuid.UUID:
    parsed = parse_job_id(value)
    if parsed is None:
        raise NotFound("Job not found")
    return parsed


async def get_job(session: AsyncSession, user: User, job_id: str) -> tuple[Job, str]:
    """The caller's job and its Cargo slug; any other id (malformed, unknown, someone else's) → 404."""
    parsed = job_id_or_404(job_id)
    query = select(Job, Workload.slug).join(Workload, Workload.id == Job.workload_id).where(Job.id == parsed)
    if not user.is_admin:
        query = query.where(Job.user_id == user.id)
    row = (await session.execute(query)).one_or_none()
    if row is None:
        raise NotFound("Job not found")
    return row[0], row[1]


async def stream_access(runtime: Runtime, user: User, job_id: str) -> tuple[uuid.UUID, bool]:
    """The caller's job id, and whether the job may have ended, for opening its stream: from this replica's
    output stream of the job when it is here (a job just assigned), else one statement on the hot paths'
    pool; the same 404 as `get_job` for any other id."""
    parsed = job_id_or_404(job_id)
    accumulator = accumulator_of(runtime)
    known = None if accumulator is None else accumulator.owner_of(parsed)
    if known is not None and (user.is_admin or known[0] == user.id):
        return parsed, known[1]
    params = {"id": parsed, "any_owner": user.is_admin, "user_id": user.id}
    async with runtime.db.raw_statement() as session:
        state = (await session.execute(sql.OWNED_JOB_STATE_SQL, params)).scalar()
    if state is None:
        raise NotFound("Job not found")
    return parsed, rules.is_terminal(state)


async def list_jobs(
    session: AsyncSession, user: User, *, limit: int, offset: int
) -> tuple[list[tuple[Job, str]], int]:
    """The caller's jobs, newest first, and how many there are in total."""
    total = await session.scalar(select(func.count()).select_from(Job).where(Job.user_id == user.id))
    rows = await session.execute(
        select(Job, Workload.slug)
        .join(Workload, Workload.id == Job.workload_id)
        .where(Job.user_id == user.id)
        .order_by(Job.created_at.desc(), Job.id)
        .limit(limit)
        .offset(offset)
    )
    return [(r[0], r[1]) for r in rows], int(total or 0)


async def queue_position(session: AsyncSession, job: Job) -> int | None:
    """1-based place in the queue of a waiting job; None once it has left the queue."""
    if job.state != rules.QUEUED:
        return None
    ahead = await session.scalar(
        sql.QUEUE_POSITION_SQL, {"priority": job.priority, "created_at": job.created_at}
    )
    return int(ahead or 0) + 1


async def cancel_job(runtime: Runtime, user: User, job_id: str) -> tuple[Job, str]:
    """Cancel at once (full refund) and tell the Island; a job already terminal is returned unchanged."""
    async with runtime.db.session() as session:
        job, _ = await get_job(session, user, job_id)
    if not rules.is_terminal(job.state):
        await lifecycle.transition(
            runtime, moves.CANCEL, job.id, lifecycle.Inputs(error="cancelled by the owner")
        )
    async with runtime.db.session() as session:
        return await get_job(session, user, job_id)
