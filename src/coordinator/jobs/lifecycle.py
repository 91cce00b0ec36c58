"""The job-lifecycle engine: applies one move of `jobs/moves.py` — guarded UPDATE, the move's effects in
the same transaction, then (after commit) the move's hooks. Every state change of a job goes through here.

Shape of every caller: `transition(runtime, move, job_id, inputs)` in its own transaction, or, for the
sweeps and the dispatcher that lock many rows first, `transition_in(store, …)` inside theirs followed by
`after_commit(runtime, session, results)`. The store is PostgreSQL (`PgStore`) in production and an
in-memory one (`jobs/memory.py`) in the unit tests, so the rules are tested without a database."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.billing import settlement
from coordinator.errors import NotFound
from coordinator.jobs import batch_rollup, moves, rules
from coordinator.jobs import repository as sql
from coordinator.jobs.batch_rules import BatchStep
from coordinator.jobs.hooks import TransitionResult
from coordinator.jobs.moves import Move
from coordinator.karma import service as karma
from coordinator.repo.raw import RawSession, Sql
from coordinator.runtime import Runtime
from coordinator.telemetry import context

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Inputs:
    """What a caller brings to a move. `host_id` set means the Island reported it: only the Island the
    job is assigned to may apply it. `attempt` pins a requeue or give-back to one assignment."""

    host_id: uuid.UUID | None = None
    error: str | None = None
    usage: dict[str, Any] | None = None
    output: str | None = None
    penalty: str | None = None
    attempt: int | None = None
    extend_seconds: int = 0


@dataclass(frozen=True)
class Moved:
    """The row after a guarded UPDATE (the columns of `repository.RETURNING`) and its previous state."""

    id: uuid.UUID
    user_id: int
    workload_id: int
    state: str
    host_id: uuid.UUID | None
    attempt: int
    max_attempts: int
    budget: Decimal
    clearing_price: Decimal | None
    created_at: datetime
    error: str | None
    usage: dict[str, Any] | None
    started_at: datetime | None
    completed_at: datetime | None
    old_state: str | None
    stream_owner: str | None = None
    parent_id: uuid.UUID | None = None
    is_batch: bool = False
    charged: Decimal | None = None  # what the consumer pays, as the finish statement settled it
    host_owner_id: int | None = None
    prompt_chars: int | None = None  # the assignment's (`repository.prompt_chars_sql`)
    karma_state: dict[str, Any] | None = None  # a success's Island, locked (`karma.locked_karma_sql`)

    @classmethod
    def of(cls, row: Any, old_state: str | None) -> Moved:
        return cls(
            row.id,
            row.user_id,
            row.workload_id,
            row.state,
            row.host_id,
            row.attempt,
            row.max_attempts,
            Decimal(row.budget),
            None if row.clearing_price is None else Decimal(row.clearing_price),
            row.created_at,
            row.error,
            row.usage,
            row.started_at,
            row.completed_at,
            old_state,
            getattr(row, "stream_owner", None),
            getattr(row, "parent_id", None),
            bool(getattr(row, "is_batch", False)),
            None if getattr(row, "charged", None) is None else Decimal(row.charged),
            getattr(row, "host_owner_id", None),
            getattr(row, "prompt_chars", None),
            getattr(row, "karma_state", None),
        )


class JobStore(Protocol):
    """One transaction's view of the jobs table: the guarded UPDATE of a move and its effects."""

    async def apply(self, move: Move, job_id: uuid.UUID, inputs: Inputs) -> Moved | None: ...

    async def settle(self, moved: Moved, karma_success: bool) -> tuple[Decimal, Decimal | None]:
        """Settle the money of an ended job: what the consumer paid, and its balance after (if known);
        with `karma_success`, also credit the Island that succeeded (`moves.KARMA_SUCCESS`)."""
        ...

    async def penalize(self, host_id: uuid.UUID, event: str, job_id: uuid.UUID | None) -> None: ...

    async def roll_up(self, moved: Moved) -> BatchStep | None:
        """A batch child ended or a batch parent was cancelled: the batch's next step."""
        ...


def _old_state(move: Move, row: Any) -> str | None:
    """A one-source move knows where it came from; the others return it (`old.old_state`)."""
    return move.sources[0] if len(move.sources) == 1 else row.old_state


class PgStore:
    """`JobStore` on PostgreSQL: the named SQL of `jobs/repository.py` inside the caller's session."""

    def __init__(self, session: Sql) -> None:
        self.session = session

    async def apply(self, move: Move, job_id: uuid.UUID, inputs: Inputs) -> Moved | None:
        statement: Any
        params: dict[str, Any]
        if move is moves.START:
            statement, params = sql.START_SQL, {"extend": inputs.extend_seconds}
        elif move is moves.GIVE_BACK:
            statement, params = sql.RETRY_PUBLISH_SQL, {"attempt": inputs.attempt}
        elif move is moves.REQUEUE:
            statement, params = sql.REQUEUE_SQL, {"attempt": inputs.attempt}
        elif move in moves.BATCH_CLOSE_MOVES.values():
            statement, params = (
                sql.CLOSE_BATCH_SQL[move.target],
                {"output": inputs.output, "error": inputs.error},
            )
        elif move in moves.FINISH_MOVES.values():
            statement = sql.FINISH_SQL[move.target]
            params = {"error": inputs.error, "usage": inputs.usage, "output": inputs.output}
        else:
            raise ValueError(f"move {move.name} is not applied to one job")
        row = (
            await self.session.execute(statement, {"id": job_id, "host_id": inputs.host_id, **params})
        ).first()
        return None if row is None else Moved.of(row, _old_state(move, row))

    async def assign_many(
        self, rows: Sequence[sql.AssignRow], stream_owner: str | None, islands: Sequence[uuid.UUID] = ()
    ) -> tuple[list[Moved], dict[uuid.UUID, int] | None]:
        """The rows assigned, and the Islands' counts of unfinished jobs before (None: nothing assigned)."""
        params = sql.assign_many_params(rows, stream_owner, islands)
        result = (await self.session.execute(sql.ASSIGN_MANY_SQL, params)).all()
        if not result:
            return [], None
        active = {uuid.UUID(k): int(v) for k, v in (result[0].active_before or {}).items()}
        return [Moved.of(r, moves.ASSIGN.sources[0]) for r in result], active

    async def settle(self, moved: Moved, karma_success: bool) -> tuple[Decimal, Decimal | None]:
        """The ledger side of the settlement the finish statement recorded: success pays the clearing
        price (Island share and fee), any other end refunds in full. What the consumer paid, and its
        balance after the refund (None when nothing moved). A success's karma is written by the same
        statement, from the Island's state the finish statement locked."""
        assert moved.charged is not None, "settled by the finish statement"
        if moved.state == moves.SUCCEED.target:
            write = None
            if karma_success and moved.host_id is not None and moved.karma_state is not None:
                started, done = moved.started_at, moved.completed_at
                seconds = 0.0 if started is None or done is None else (done - started).total_seconds()
                policy = self.session.info.get(karma.POLICY_INFO)  # the settings' (`app.build_runtime`)
                change, write = karma.success_write(
                    moved.host_id, moved.karma_state, max(seconds, 0.0), policy
                )
                karma_changes(self.session).append(change)
            paid = await settlement.settle_success(
                self.session,
                job_id=moved.id,
                user_id=moved.user_id,
                budget=moved.budget,
                clearing_price=moved.charged,
                host_id=moved.host_id,
                host_owner_id=moved.host_owner_id,
                balance_locked=True,
                karma_write=write,
            )
            return moved.charged, paid.balance
        balance = await settlement.refund_in_full(
            self.session,
            job_id=moved.id,
            user_id=moved.user_id,
            amount=moved.budget,
            reason=f"job {moved.state}",
            balance_locked=True,
        )
        return Decimal(0), balance

    async def penalize(self, host_id: uuid.UUID, event: str, job_id: uuid.UUID | None) -> None:
        await penalize_in(self.session, host_id, event, job_id)

    async def roll_up(self, moved: Moved) -> BatchStep | None:
        if moved.parent_id is not None:
            return await batch_rollup.child_ended(self.session, moved.parent_id)
        if moved.is_batch and moved.state == moves.CANCEL.target:
            return await batch_rollup.parent_cancelled(self.session, moved.id)
        return None


def store_of(where: Sql | JobStore) -> JobStore:
    return PgStore(where) if isinstance(where, AsyncSession | RawSession) else where


def result_of(
    moved: Moved,
    move: Move,
    inputs: Inputs,
    released: uuid.UUID | None,
    paid: Decimal | None = None,
    balance: Decimal | None = None,
    batch: BatchStep | None = None,
    then: tuple[TransitionResult, ...] = (),
) -> TransitionResult:
    return TransitionResult(
        job_id=moved.id,
        user_id=moved.user_id,
        workload_id=moved.workload_id,
        from_state=moved.old_state,
        to_state=moved.state,
        host_id=moved.host_id,
        attempt=moved.attempt,
        created_at=moved.created_at,
        error=moved.error,
        usage=moved.usage,
        released_host_id=released,
        stream_owner=moved.stream_owner,
        move=move.name,
        # A requeue or give-back names the Island it takes the job from, not one that reported anything.
        reported_by=None if move.target == moves.REQUEUE.target else inputs.host_id,
        credits=None if paid is None else rules.credits_used(moved.budget, paid, True),
        balance=balance,
        batch=batch,
        then=then,
        prompt_chars=moved.prompt_chars,
    )


def released_island(move: Move, moved: Moved, inputs: Inputs) -> uuid.UUID | None:
    """The Island the job just left (its slot is free again): the old one for a requeue or give-back
    (the row no longer names it), the row's own for an end; None while it still holds the job."""
    if move.target == moves.REQUEUE.target:
        return inputs.host_id
    return moved.host_id if move.terminal else None


async def transition_in(
    where: Sql | JobStore, move: Move, job_id: uuid.UUID, inputs: Inputs = Inputs()
) -> TransitionResult | None:
    """Apply `move` inside the caller's transaction: the guarded UPDATE, then the move's effects.
    None when the guard refused (already moved, another Island's, unknown job): nothing changed."""
    store = store_of(where)
    moved = await store.apply(move, job_id, inputs)
    if moved is None:
        return None
    released = released_island(move, moved, inputs)
    karma_success = moves.KARMA_SUCCESS in move.effects and moved.host_id is not None
    paid, balance = await store.settle(moved, karma_success) if moves.SETTLE in move.effects else (None, None)
    penalty = moves.penalty_for(move, penalty=inputs.penalty, reported_by=inputs.host_id, error=inputs.error)
    if penalty is not None and released is not None:
        await store.penalize(released, penalty, moved.id)
    step = await store.roll_up(moved) if moves.ROLL_UP_BATCH in move.effects else None
    closed = await close_batch_in(store, step)
    then = () if closed is None else (closed,)
    return result_of(moved, move, inputs, released, paid, balance, step, then)


async def close_batch_in(where: Sql | JobStore, step: BatchStep | None) -> TransitionResult | None:
    """Close a batch parent when its roll-up step says so (in the caller's transaction)."""
    if step is None or step.close is None:
        return None
    state, output, error = step.close
    inputs = Inputs(output=output, error=error)
    return await transition_in(where, moves.BATCH_CLOSE_MOVES[state], step.parent_id, inputs)


async def assign_in(
    session: Sql,
    rows: Sequence[sql.AssignRow],
    stream_owner: str | None,
    islands: Sequence[uuid.UUID] = (),
) -> tuple[list[tuple[Moved, TransitionResult]], dict[uuid.UUID, int] | None]:
    """queued → assigned for a whole dispatch pass in one statement (the hooks run once published); with
    the Islands' counts of unfinished jobs before it (`PgStore.assign_many`)."""
    assigned, active = await PgStore(session).assign_many(rows, stream_owner, islands)
    return [(m, result_of(m, moves.ASSIGN, Inputs(), None)) for m in assigned], active


async def start_many(
    runtime: Runtime, starts: Sequence[tuple[uuid.UUID, uuid.UUID]], extend_seconds: int
) -> list[TransitionResult]:
    """assigned → running for several (job, reporting Island) pairs in one statement, then the hooks of
    each start; a pair the guard refused (another Island's, already running, ended) is left out."""
    if not starts:
        return []
    params = {"ids": [s[0] for s in starts], "host_ids": [s[1] for s in starts], "extend": extend_seconds}
    async with runtime.db.raw_statement() as session:
        rows = (await session.execute(sql.START_MANY_SQL, params)).all()
    old = moves.START.sources[0]
    results = [result_of(Moved.of(r, old), moves.START, Inputs(host_id=r.host_id), None) for r in rows]
    await after_commit(runtime, session, results)
    return results


async def transition(
    runtime: Runtime, move: Move, job_id: uuid.UUID, inputs: Inputs = Inputs()
) -> TransitionResult | None:
    """Apply `move` in its own transaction (a one-statement move: that statement), commit, then run its
    hooks."""
    db = runtime.db
    async with db.raw_statement() if move.one_statement else db.raw_transaction() as session:
        result = await transition_in(session, move, job_id, inputs)
    await after_commit(runtime, session, [] if result is None else [result])
    return result


async def finish(
    runtime: Runtime, job_id: uuid.UUID, to_state: str, **inputs: Any
) -> TransitionResult | None:
    """End a job in `to_state` by its finish move (succeed, fail, cancel, time_out)."""
    return await transition(runtime, moves.finish_move(to_state), job_id, Inputs(**inputs))


def submitted(
    job_id: uuid.UUID,
    user_id: int,
    workload_id: int,
    created_at: datetime,
    balance: Decimal | None = None,
    *,
    placed: bool = False,
) -> TransitionResult:
    """The result of the submit move (the row was inserted and charged by `service.submit_job`); `placed`:
    its transaction also assigned it (`moves.SUBMIT_PLACED`, no dispatcher wake-up)."""
    return TransitionResult(
        job_id,
        user_id,
        workload_id,
        None,
        moves.SUBMIT.target,
        None,
        0,
        created_at,
        move=(moves.SUBMIT_PLACED if placed else moves.SUBMIT).name,
        balance=balance,
    )


async def after_commit(runtime: Runtime, session: Sql | None, results: Iterable[TransitionResult]) -> None:
    """Once the moves committed: new karma into the fleet view, then each move's declared hooks."""
    if session is not None:
        apply_karma(runtime, session)
    builtin = runtime.builtin_hooks
    extensions = runtime.hooks
    for result in _with_consequences(results):
        move = moves.MOVES[result.move]
        with context.bind(job_id=result.job_id, host_id=result.host_id or result.released_host_id):
            for name in move.hooks:
                if name == moves.EXTENSIONS:
                    await extensions.run(result)
                elif name != moves.FLEET_KARMA:
                    await _run_hook(name, builtin[name], result)


def _with_consequences(results: Iterable[TransitionResult]) -> Iterable[TransitionResult]:
    """Each result, then the moves applied in its transaction because of it (a batch parent's close)."""
    for result in results:
        yield result
        yield from _with_consequences(result.then)


async def _run_hook(name: str, hook: Any, result: TransitionResult) -> None:
    try:
        await hook(result)
    except Exception:
        log.exception("jobs.hook_failed", hook=name, job_id=str(result.job_id))


# ---------------------------------------------------------------- karma outside a move, and after commit


async def penalize_in(session: Sql, host_id: uuid.UUID, event_type: str, job_id: uuid.UUID | None) -> None:
    """Take karma from an Island by the karma rules (lease_expired −2, timeout −1, job_failed −1,
    impersonation −5 + review flag); an unknown Island changes nothing."""
    try:
        change = await karma.penalize(session, host_id, event_type, job_id=job_id)
    except NotFound:
        return
    karma_changes(session).append(change)


def karma_changes(session: Sql) -> list[karma.KarmaChange]:
    """Karma changes made in this session's transaction, for the fleet view after commit."""
    changes: list[karma.KarmaChange] = session.info.setdefault("karma_changes", [])
    return changes


def apply_karma(runtime: Runtime, session: Sql) -> None:
    """After commit: copy the transaction's new karma balances into the fleet view (placement scores them)."""
    for change in session.info.pop("karma_changes", []):
        view = runtime.fleet.get(change.host_id)
        if view is not None:
            view.karma = change.karma
