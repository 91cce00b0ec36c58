"""Background jobs: queues and schedules of domain-rules, and a real worker running the HostHealth sweep."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import text

from coordinator.app import WorkerChild
from coordinator.runtime import Runtime
from coordinator.supervisor import Supervisor
from coordinator.workers.app import create_app

SCHEDULE = {
    "host_health": ("maintenance", "* * * * *"),
    "job_lease": ("maintenance", "* * * * *"),
    "dead_letter": ("maintenance", "*/5 * * * *"),
    "job_retry": ("maintenance", "*/5 * * * *"),
    "auth_cleanup": ("maintenance", "0 * * * *"),
    "reputation": ("maintenance", "30 * * * *"),
    "rescan_scheduler": ("maintenance", "0 3 * * 0"),
    "payout_batch": ("payouts", "0 2 * * 0"),
}


def test_every_worker_has_its_queue_and_schedule() -> None:
    app = create_app("postgresql://unused/unused")
    periodic = {
        task.task.name: (task.task.queue, task.cron) for task in app.periodic_registry.periodic_tasks.values()
    }
    for name, expected in SCHEDULE.items():
        assert periodic[name] == expected, name
    assert app.tasks["workload_scan"].queue == "security_scans"


async def test_a_real_worker_marks_silent_islands_offline(runtime: Runtime) -> None:
    silent, alive = uuid.uuid4(), uuid.uuid4()
    async with runtime.db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO hosts (id, status, approved, last_heartbeat_at) VALUES "
                "(:s, 'online', true, now() - interval '45 seconds'), (:a, 'online', true, now())"
            ),
            {"s": silent, "a": alive},
        )
    supervisor = Supervisor([WorkerChild(runtime)])
    await supervisor.start()
    try:
        app = create_app(runtime.settings.libpq_database_url)
        async with app.open_async():
            await app.tasks["host_health"].defer_async(timestamp=0)
        for _ in range(100):
            async with runtime.db.session() as session:
                status = (
                    await session.execute(text("SELECT status FROM hosts WHERE id=:s"), {"s": silent})
                ).scalar_one()
            if status == "offline":
                break
            await asyncio.sleep(0.1)
    finally:
        await supervisor.stop()
    async with runtime.db.session() as session:
        rows = dict((await session.execute(text("SELECT id, status FROM hosts"))).all())
    assert rows == {silent: "offline", alive: "online"}
