"""Background jobs: the tasks the worker really runs carry the queues and schedules of domain-rules
(Background workers), and a started worker runs the due sweeps by itself, with their effect."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from typing import Any

import croniter
from sqlalchemy import text

from coordinator.app import WorkerChild
from coordinator.jobs import service
from coordinator.runtime import Runtime
from coordinator.supervisor import Supervisor
from coordinator.telemetry import metrics
from coordinator.workers.app import QUEUES, create_app
from tests.factories import make_consumer, seed_cargos
from tests.islands_support import eventually
from tests.job_support import karma_events, make_island

MINUTE, HOUR, WEEK = 60, 3600, 7 * 24 * 3600
SUNDAY = 6  # datetime.weekday()

# The table of domain-rules, "Background workers": queue, period, and (weekly ones) the Sunday hour.
# Market snapshots are "every 5 minutes per Cargo" (domain-rules, Market); `scan_backstop` re-queues
# submissions whose scan never started (docs/registry.md).
SPEC: dict[str, tuple[str, int, int | None]] = {
    "host_health": ("maintenance", MINUTE, None),
    "job_lease": ("maintenance", MINUTE, None),
    "dead_letter": ("maintenance", 5 * MINUTE, None),
    "job_retry": ("maintenance", 5 * MINUTE, None),
    "auth_cleanup": ("maintenance", HOUR, None),
    "reputation": ("maintenance", HOUR, None),
    "rescan_scheduler": ("maintenance", WEEK, 3),
    "payout_batch": ("payouts", WEEK, 2),
    "market_snapshot": ("maintenance", 5 * MINUTE, None),
    "scan_backstop": ("maintenance", 5 * MINUTE, None),
}


def fire_times(cron: str, count: int) -> list[dt.datetime]:
    start = dt.datetime(2026, 11, 30, 12, 0, 30, tzinfo=dt.UTC)  # a Monday, mid-minute
    it = croniter.croniter(cron, start)
    return [it.get_next(dt.datetime) for _ in range(count)]


def test_the_scheduled_tasks_run_on_the_schedule_of_domain_rules() -> None:
    app = create_app("postgresql://unused/unused")  # the app `WorkerChild` runs
    periodic = {p.task.name: p for p in app.periodic_registry.periodic_tasks.values()}
    assert set(periodic) == set(SPEC)
    for name, (queue, period, sunday_hour) in SPEC.items():
        task = periodic[name].task
        assert task.queue == queue and queue in QUEUES, name
        assert task is app.tasks[name], name  # the registered task itself, not a copy
        times = fire_times(periodic[name].cron, 4)
        gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(times)}
        assert gaps == {period}, (name, periodic[name].cron)
        if sunday_hour is not None:
            assert (times[0].weekday(), times[0].hour, times[0].minute) == (SUNDAY, sunday_hour, 0), name
    assert app.tasks["workload_scan"].queue == "security_scans"  # on demand, not scheduled
    assert "workload_scan" not in periodic


async def _host_status(runtime: Runtime, host_id: uuid.UUID) -> str:
    async with runtime.db.session() as session:
        status: str = (
            await session.execute(text("SELECT status FROM hosts WHERE id = :id"), {"id": host_id})
        ).scalar_one()
    return status


async def _job(runtime: Runtime, job_id: uuid.UUID) -> Any:
    async with runtime.db.session() as session:
        return (
            await session.execute(
                text("SELECT state, host_id, attempt FROM jobs WHERE id = :id"), {"id": job_id}
            )
        ).one()


async def test_a_started_worker_runs_the_due_sweeps_by_itself(runtime: Runtime) -> None:
    """Nothing is deferred by hand: the worker's periodic deferrer queues the every-minute tasks on start
    (procrastinate defers the last due run of a schedule), and their real bodies do their work."""
    await seed_cargos(runtime)
    island = await make_island(runtime)
    consumer = await make_consumer(runtime)
    job = await service.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "hi"}, budget="2")
    silent, alive = uuid.uuid4(), uuid.uuid4()
    async with runtime.db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO hosts (id, status, approved, last_heartbeat_at) VALUES "
                "(:s, 'online', true, now() - interval '45 seconds'), (:a, 'online', true, now())"
            ),
            {"s": silent, "a": alive},
        )
        # HostHealth would also take the Island of the job offline: it stays fresh for the test.
        await session.execute(
            text(
                "UPDATE hosts SET status = 'online', last_heartbeat_at = now() + interval '1 hour' "
                "WHERE id = :h"
            ),
            {"h": island.id},
        )
        # An assigned job whose lease ran out a minute ago (JobLease: expire, penalise, requeue).
        await session.execute(
            text(
                "UPDATE jobs SET state = 'assigned', host_id = :h, attempt = 1, "
                "assigned_at = now() - interval '2 minutes', "
                "lease_expires_at = now() - interval '1 minute' WHERE id = :id"
            ),
            {"h": island.id, "id": job.id},
        )
    due = ("host_health", "job_lease", "dead_letter", "job_retry")  # every 1 or 5 min: due at any start
    before = {name: _runs(name) for name in due}
    supervisor = Supervisor([WorkerChild(runtime)])
    await supervisor.start()
    try:
        await eventually(lambda: _is(_host_status(runtime, silent), "offline"), within=30)
        requeued = await eventually(lambda: _requeued(runtime, job.id), within=30)
        await eventually(lambda: _ran_since(before), within=30)
    finally:
        await supervisor.stop()
    assert await _host_status(runtime, alive) == "online"
    assert requeued.host_id is None
    assert ("lease_expired", -2) in await karma_events(runtime, island.id)


def _runs(name: str) -> float:
    return float(metrics.worker_runs.labels(worker=name, outcome="success")._value.get())


async def _ran_since(before: dict[str, float]) -> bool:
    return all(_runs(name) > count for name, count in before.items())


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _requeued(runtime: Runtime, job_id: uuid.UUID) -> Any:
    job = await _job(runtime, job_id)
    return job if job.state == "queued" else None
