"""Property tests of the money path: random interleavings of submit, settle, refund, duplicates and crashes
over the real ledger and settlement functions against PostgreSQL. Money is conserved; no job is charged or
refunded twice; every terminal job is settled exactly as its outcome says."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.billing import ledger, settlement
from coordinator.jobs import lifecycle
from coordinator.jobs.repository import SUBMIT_AND_LOCK_SQL, SUBMIT_SQL, AssignRow
from coordinator.runtime import Runtime
from tests.factories import make_consumer

ACTIVE = ("queued", "assigned", "running")
FAILURES = ("failed", "cancelled", "timeout", "dead_letter")

# The guarded terminal transition of the jobs context, reproduced: only one concurrent caller wins.
FINISH_SQL = text(
    "UPDATE jobs SET state = :state, clearing_price = :price WHERE id = :id AND state IN "
    "('queued', 'assigned', 'running') RETURNING user_id, budget, host_id"
)


class Crash(Exception):
    """A process dying mid-transaction: everything the transaction wrote is rolled back."""


@dataclass(frozen=True)
class Op:
    kind: str  # submit, succeed, fail, raw_refund, raw_settle
    job: int
    amount: int = 0
    crash: bool = False


ops = st.lists(
    st.one_of(
        st.builds(Op, st.just("submit"), st.integers(0, 5), st.integers(1, 400), st.booleans()),
        st.builds(Op, st.just("succeed"), st.integers(0, 5), st.integers(0, 500), st.booleans()),
        st.builds(Op, st.sampled_from(FAILURES), st.integers(0, 5), st.just(0), st.booleans()),
        # duplicated / late messages that bypass the state guard and hit the ledger directly
        st.builds(Op, st.just("raw_refund"), st.integers(0, 5)),
        st.builds(Op, st.just("raw_settle"), st.integers(0, 5), st.integers(0, 500)),
    ),
    max_size=30,
)


async def _submit(session: AsyncSession, user_id: int, workload_id: int, job_id: uuid.UUID, op: Op) -> None:
    """The production submit statement (a duplicate job id fails on the primary key and rolls back); an
    odd amount asks it to lock the Island for an assignment in the same transaction, made by the
    production assignment statement when the lock was had (as `jobs.service.submit` does)."""
    direct = op.amount % 2 == 1
    row = (
        await session.execute(
            SUBMIT_AND_LOCK_SQL if direct else SUBMIT_SQL,
            {
                "id": job_id,
                "key": f"charge:{job_id}",
                "user_id": user_id,
                "workload_id": workload_id,
                "revision": 0,
                "explicit": Decimal(op.amount),
                "default": Decimal(op.amount),
                "active_cap": None,
                "daily_cap": None,
                "input": {},
                "priority": 0,
                "region": None,
                "max_attempts": 3,
                "parent_id": None,
                "batch_index": None,
                **({"direct_host": HOST} if direct else {}),
            },
        )
    ).one()
    if row.outcome != "ok":
        raise Crash("402: nothing written")  # insufficient credits: roll back
    if row.direct_host is not None:
        move = AssignRow(job_id, HOST, 60, None, Decimal(op.amount), None)
        assigned, _ = await lifecycle.assign_in(session, [move], "replica", [HOST])
        assert [m.id for m, _ in assigned] == [job_id]
    else:
        await session.execute(text("UPDATE jobs SET host_id = :h WHERE id = :id"), {"h": HOST, "id": job_id})


async def _finish(session: AsyncSession, job_id: uuid.UUID, op: Op) -> None:
    state = "failed" if op.kind == "dead_letter" else ("succeeded" if op.kind == "succeed" else op.kind)
    row = (await session.execute(FINISH_SQL, {"state": state, "price": op.amount, "id": job_id})).first()
    if row is None:
        return  # late or duplicate: acknowledged, nothing changes
    await _settle(session, job_id, op, row[0], Decimal(row[1]))


async def _settle(session: AsyncSession, job_id: uuid.UUID, op: Op, user_id: int, budget: Decimal) -> None:
    if op.kind in ("succeed", "raw_settle"):
        await settlement.settle_success(
            session,
            job_id=job_id,
            user_id=user_id,
            budget=budget,
            clearing_price=Decimal(op.amount),
            host_id=HOST,
            host_owner_id=None,
        )
    else:
        await settlement.refund_in_full(
            session, job_id=job_id, user_id=user_id, amount=budget, reason=op.kind
        )


HOST = uuid.UUID("00000000-0000-4000-8000-000000000001")


async def _apply(runtime: Runtime, user_id: int, workload_id: int, jobs: list[uuid.UUID], op: Op) -> None:
    job_id = jobs[op.job]
    try:
        async with runtime.db.transaction() as session:
            if op.kind == "submit":
                await _submit(session, user_id, workload_id, job_id, op)
            elif op.kind.startswith("raw_"):
                row = (
                    await session.execute(text("SELECT user_id, budget FROM jobs WHERE id=:i"), {"i": job_id})
                ).first()
                if row is not None:
                    await _settle(session, job_id, op, row[0], Decimal(row[1]))
            else:
                await _finish(session, job_id, op)
            if op.crash:
                raise Crash("killed before commit")
    except (Crash, IntegrityError):
        pass  # a killed transaction, or a concurrent duplicate refused by a unique key: rolled back


async def _check(runtime: Runtime, jobs: list[uuid.UUID]) -> None:
    async with runtime.db.session() as session:
        assert await ledger.unreconciled_users(session) == []
        totals = await ledger.ledger_totals(session)
        assert totals.imbalance == 0
        assert totals.grants == totals.balances + totals.charges - totals.refunds
        for job_id in jobs:
            job = (
                await session.execute(text("SELECT state, budget FROM jobs WHERE id=:i"), {"i": job_id})
            ).first()
            moves = (
                await session.execute(
                    text("SELECT type, amount FROM transactions WHERE job_id=:i ORDER BY id"), {"i": job_id}
                )
            ).all()
            earned = (
                await session.execute(
                    text("SELECT SUM(amount) FROM host_earnings WHERE job_id=:i"), {"i": job_id}
                )
            ).scalar()
            types = [m[0] for m in moves]
            assert types.count("charge") <= 1 and types.count("refund") <= 1
            if job is None:
                assert moves == [] and earned is None  # a crashed or refused submit leaves nothing
                continue
            charged = -sum((m[1] for m in moves if m[0] == "charge"), Decimal(0))
            refunded = sum((m[1] for m in moves if m[0] == "refund"), Decimal(0))
            assert charged == job[1]
            if job[0] in ACTIVE:
                # still running: only a raw (guard-bypassing) message could have settled it early
                assert refunded <= charged
            elif job[0] == "succeeded":
                assert charged - refunded == (earned or 0)
            else:
                assert refunded == charged or (earned is not None and charged - refunded == earned)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(program=ops, credits=st.integers(0, 1000), concurrency=st.sampled_from([1, 1, 3, 6]))
async def test_money_is_conserved_under_any_interleaving(
    runtime: Runtime, program: list[Op], credits: int, concurrency: int
) -> None:
    """Ops run in groups of `concurrency` at once on separate connections (real PostgreSQL interleavings)."""
    consumer = await make_consumer(runtime, f"{uuid.uuid4().hex}@example.com", credits=Decimal(credits))
    async with runtime.db.transaction() as session:
        workload_id = (
            await session.execute(
                text(
                    "INSERT INTO workloads (slug, name) VALUES ('p', 'p') "
                    "ON CONFLICT (slug) DO UPDATE SET name = 'p' RETURNING id"
                )
            )
        ).scalar_one()
        await session.execute(text("INSERT INTO hosts (id) VALUES (:h) ON CONFLICT DO NOTHING"), {"h": HOST})
    jobs = [uuid.uuid4() for _ in range(6)]
    for start in range(0, len(program), concurrency):
        group = program[start : start + concurrency]
        await asyncio.gather(*[_apply(runtime, consumer.user.id, workload_id, jobs, op) for op in group])
    await _check(runtime, jobs)
