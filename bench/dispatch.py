"""Dispatch benchmark: submit→assigned latency (p50/p99) and dispatcher throughput, in one process.

Embedded PostgreSQL and NATS, the real job pipeline (bus, status consumer, dispatcher), and fake Islands
consuming their JetStream consumers. Run: `.venv/bin/python bench/dispatch.py [--jobs N] [--islands N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text
from tests.factories import make_consumer, seed_cargos
from tests.fake_island import FakeIsland
from tests.job_support import make_island

from coordinator.app import NatsConnectionChild, hosts_children, job_children
from coordinator.config import Settings
from coordinator.devstack import EmbeddedNats, EmbeddedPostgres, free_port
from coordinator.hosts.fleet import FleetView
from coordinator.jobs import service, wiring
from coordinator.jobs.hooks import TransitionResult
from coordinator.repo.migrate import upgrade
from coordinator.runtime import Runtime
from coordinator.supervisor import Supervisor

LATENCY_SAMPLES = 100


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(jobs: int, islands: int, slots: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp:
        pg, nats_server = EmbeddedPostgres(Path(tmp) / "pg"), EmbeddedNats(Path(tmp) / "nats")
        pg.start()
        nats_server.start()
        url = pg.ensure_database("bench")
        upgrade(url)
        settings = Settings(
            env="test",
            secret_key="bench",
            database_url=url,
            nats_url=nats_server.url,
            port=free_port(),
            # One unverified account submits the whole burst: lift its quotas (not the defaults).
            active_jobs_unverified=10**8,
            daily_spend_unverified=1e12,
        )
        runtime = Runtime.from_settings(settings)
        fleet = FleetView(heartbeat_timeout=float(settings.heartbeat_timeout_seconds))
        runtime.components["fleet"] = fleet
        children = [NatsConnectionChild(runtime), *hosts_children(runtime, fleet), *job_children(runtime)]
        supervisor = Supervisor(children)
        await supervisor.start()
        try:
            return await measure(runtime, nats_server.url, jobs, islands, slots)
        finally:
            await supervisor.stop()
            await runtime.db.dispose()
            nats_server.stop()
            pg.stop()


async def measure(runtime: Runtime, nats_url: str, jobs: int, islands: int, slots: int) -> dict[str, Any]:
    await seed_cargos(runtime)
    async with runtime.db.transaction() as session:
        await session.execute(text("UPDATE workloads SET cold_start_seconds = 0"))
    consumer = await make_consumer(runtime, credits=Decimal(10_000_000))
    assigned_at: dict[uuid.UUID, float] = {}
    finished_at: dict[uuid.UUID, float] = {}
    not_succeeded: list[str] = []

    async def record(result: TransitionResult) -> None:
        if result.to_state == "assigned":
            assigned_at[result.job_id] = time.perf_counter()
        elif result.to_state in ("succeeded", "failed", "cancelled", "timeout"):
            finished_at[result.job_id] = time.perf_counter()
            if result.to_state != "succeeded":
                not_succeeded.append(result.to_state)

    wiring.hooks(runtime).register(record)
    fleet = service.fleet_of(runtime)
    assert fleet is not None
    fleet_islands = [
        FakeIsland(nats_url, chunks=("ok",), heartbeat_every=1.0, max_concurrent=slots)
        for _ in range(islands)
    ]
    for island in fleet_islands:
        await make_island(runtime, host_id=island.host_id, max_concurrent=slots)
        await island.start()
    while len(fleet.available()) < islands:  # noqa: ASYNC110 - the first heartbeats fill the fleet
        await asyncio.sleep(0.05)

    # 1. Latency: one job at a time on an idle fleet (submit returns → AssignJob published).
    latencies = []
    for _ in range(LATENCY_SAMPLES):
        started = time.perf_counter()
        job = await service.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "hi"})
        while job.id not in assigned_at:  # noqa: ASYNC110 - polling a hook's record is the measurement
            await asyncio.sleep(0.0005)
        latencies.append((assigned_at[job.id] - started) * 1000)
    while len(finished_at) < LATENCY_SAMPLES:  # noqa: ASYNC110
        await asyncio.sleep(0.01)

    # 2. Throughput: a burst of jobs submitted concurrently; time until all are assigned / finished.
    gate = asyncio.Semaphore(32)

    async def submit() -> uuid.UUID:
        async with gate:
            return (await service.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "hi"})).id

    print("latency measured; burst...", file=sys.stderr, flush=True)
    burst_start = time.perf_counter()
    ids = await asyncio.gather(*(submit() for _ in range(jobs)))
    submitted = time.perf_counter()
    while not all(i in assigned_at for i in ids):  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    all_assigned = time.perf_counter()
    while not all(i in finished_at for i in ids):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    all_done = time.perf_counter()
    for island in fleet_islands:
        await island.stop()
    return {
        "submit_to_assigned_ms_p50": round(statistics.median(latencies), 2),
        "submit_to_assigned_ms_p99": round(pct(latencies, 0.99), 2),
        "burst_jobs": jobs,
        "burst_submit_per_s": round(jobs / (submitted - burst_start), 1),
        "burst_assigned_per_s": round(jobs / (all_assigned - burst_start), 1),
        "burst_completed_per_s": round(jobs / (all_done - burst_start), 1),
        "burst_not_succeeded": len(not_succeeded),
        "islands": islands,
        "slots_per_island": slots,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--islands", type=int, default=10)
    parser.add_argument("--slots", type=int, default=50)
    args = parser.parse_args()
    result = asyncio.run(run(args.jobs, args.islands, args.slots))
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
