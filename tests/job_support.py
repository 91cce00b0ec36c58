"""Helpers of the job tests: Islands in the database and the fleet view, money checks."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from sqlalchemy import event, select, text

from coordinator.billing import ledger
from coordinator.hosts.fleet import FleetView, HostView
from coordinator.hosts.models import Host
from coordinator.jobs.models import Job
from coordinator.runtime import Runtime


async def make_island(
    runtime: Runtime,
    *,
    host_id: uuid.UUID | None = None,
    runtimes: tuple[str, ...] = ("container", "wasm"),
    ram_mb: int = 16384,
    vram_mb: int | None = None,
    cpu_cores: int = 8,
    max_concurrent: int = 4,
    region: str | None = None,
    owner_id: int | None = None,
    asking_prices: dict[str, str] | None = None,
    status: str = "online",
    fleet: FleetView | None = None,
) -> HostView:
    """An approved Island, stored in `hosts` and (when a fleet is given) live in the fleet view."""
    host_id = host_id or uuid.uuid4()
    async with runtime.db.transaction() as session:
        session.add(
            Host(
                id=host_id,
                owner_id=owner_id,
                status=status,
                approved=True,
                region=region,
                cpu_cores=cpu_cores,
                ram_mb=ram_mb,
                gpu_vram_mb=vram_mb,
                supported_runtimes=list(runtimes),
                max_concurrent=max_concurrent,
                asking_prices=asking_prices or {},
            )
        )
    view = HostView(
        id=host_id,
        owner_id=owner_id,
        status=status,
        approved=True,
        region=region,
        cpu_cores=cpu_cores,
        ram_mb=ram_mb,
        gpu_vram_mb=vram_mb,
        supported_runtimes=runtimes,
        max_concurrent=max_concurrent,
        asking_prices={k: Decimal(v) for k, v in (asking_prices or {}).items()},
        last_heartbeat_monotonic=time.monotonic(),
    )
    if fleet is not None:
        fleet.put(view)
    return view


async def job_row(runtime: Runtime, job_id: uuid.UUID | str) -> Job:
    async with runtime.db.session() as session:
        job = await session.get(Job, uuid.UUID(str(job_id)))
    assert job is not None
    return job


async def balance(runtime: Runtime, user_id: int) -> Decimal:
    async with runtime.db.session() as session:
        value = await session.scalar(text("SELECT credits FROM users WHERE id = :id"), {"id": user_id})
    return Decimal(value)


async def assert_money_conserved(runtime: Runtime) -> None:
    """Ledger reconciles, and no job was charged twice or refunded twice."""
    async with runtime.db.session() as session:
        assert await ledger.unreconciled_users(session) == []
        dup = (
            await session.execute(
                text(
                    "SELECT job_id, type, count(*) FROM transactions WHERE job_id IS NOT NULL "
                    "GROUP BY job_id, type HAVING count(*) > 1"
                )
            )
        ).all()
        assert dup == []


async def transactions_of(runtime: Runtime, job_id: uuid.UUID) -> list[tuple[str, Decimal]]:
    async with runtime.db.session() as session:
        rows = await session.execute(
            text("SELECT type, amount FROM transactions WHERE job_id = :id ORDER BY id"), {"id": job_id}
        )
        return [(r[0], Decimal(r[1])) for r in rows]


async def karma_events(runtime: Runtime, host_id: uuid.UUID) -> list[tuple[str, int]]:
    async with runtime.db.session() as session:
        rows = await session.execute(
            text("SELECT event_type, delta FROM karma_events WHERE host_id = :id ORDER BY id"),
            {"id": host_id},
        )
        return [(r[0], int(r[1])) for r in rows]


async def host_row(runtime: Runtime, host_id: uuid.UUID) -> Any:
    async with runtime.db.session() as session:
        return (await session.execute(select(Host).where(Host.id == host_id))).scalar_one()


@contextlib.contextmanager
def statements_of(runtime: Runtime) -> Iterator[list[str]]:
    """Every SQL statement the runtime's engine sends inside the block, in order."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(runtime.db.engine.sync_engine, "before_cursor_execute", record)
    runtime.db.raw_observers.append(seen.append)
    try:
        yield seen
    finally:
        event.remove(runtime.db.engine.sync_engine, "before_cursor_execute", record)
        runtime.db.raw_observers.remove(seen.append)
