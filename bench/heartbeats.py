"""Heartbeat ingestion cost: CPU of the coordinator process per 1,000 heartbeats/s through the real NATS
host handler (parse, fleet view update, batched PostgreSQL flush).

A child process publishes official-format heartbeats for N Islands at a fixed rate; this process runs the
real `HostHandler` + `HeartbeatFlusher` on embedded nats-server and PostgreSQL (or NATS_URL /
COORDINATOR_TEST_DATABASE_URL) and measures its own CPU time over the window.

    .venv/bin/python bench/heartbeats.py --islands 10000 --rate 1000 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HEARTBEAT = (
    '{"host_id":"%s","status":"online","active_jobs":0,"timestamp":%d,"agent_version":"0.4.0",'
    '"system":{"cpu_percent":0.0,"memory_used_mb":20480,"memory_total_mb":64215,"disk_used_gb":700,'
    '"disk_total_gb":1863},"gpus":[{"index":0,"utilization_percent":3,"memory_used_mb":512,'
    '"memory_total_mb":24564,"temperature_c":41,"power_draw_w":28.5}],"cache":{"cached_image_count":0,'
    '"cached_size_mb":0,"warm_workload_count":1,"warm_workload_ids":["3"]},"performance_estimates":'
    '{"gpu_bandwidth_gb_s":1008.0,"estimated_llm_tok_s":123.0,"max_concurrent_containers":16,'
    '"wasm_memory_limit_mb":48161,"supported_runtimes":["container","wasm","diffusers"],"nats_rtt_ms":12.5},'
    '"asking_prices":{"llm-chat":"2.0","_default":"1.0"}}'
)


def publish_heartbeats(nats_url: str, host_ids: list[str], rate: float, seconds: float) -> None:
    """The simulated fleet (a separate process, so its CPU is not counted): `rate` beats/s, round robin."""

    async def main() -> None:
        import nats

        nc = await nats.connect(nats_url, pending_size=64 * 1024 * 1024)
        tick = 0.01
        per_tick = rate * tick
        owed, sent, index = 0.0, 0, 0
        started = time.monotonic()
        while (now := time.monotonic()) - started < seconds:
            owed += per_tick
            while owed >= 1:
                host = host_ids[index % len(host_ids)]
                payload = (HEARTBEAT % (host, int(time.time() * 1000))).encode()
                await nc.publish(f"host.{host}.heartbeat", payload)
                index, sent, owed = index + 1, sent + 1, owed - 1
            await nc.flush()
            await asyncio.sleep(max(0.0, started + (sent / rate) - time.monotonic()))
            del now
        await nc.drain()

    asyncio.run(main())


def postgres_cpu(marker: str | None) -> float:
    """CPU seconds of the embedded PostgreSQL (postmaster whose command line names `marker`, and children)."""
    import psutil

    if not marker:
        return 0.0
    total = 0.0
    for proc in psutil.process_iter(["cmdline"]):
        if marker in " ".join(proc.info["cmdline"] or []):
            for p in [proc, *proc.children(recursive=True)]:
                try:
                    times = p.cpu_times()
                    total += times.user + times.system
                except psutil.Error:
                    pass
    return total


async def known_fleet(nats_url: str, database_url: str, islands: int) -> tuple[Any, list[str]]:
    """A runtime whose database already knows `islands` Islands (steady state, not first contact)."""
    from sqlalchemy import text

    from coordinator.app import build_runtime
    from coordinator.config import Settings

    runtime = build_runtime(
        Settings(
            env="test", secret_key="bench", database_url=database_url, nats_url=nats_url, log_level="WARNING"
        )
    )
    host_ids = [str(uuid.uuid4()) for _ in range(islands)]
    async with runtime.db.transaction() as session:
        await session.execute(text("TRUNCATE hosts CASCADE"))
        await session.execute(
            text(
                "INSERT INTO hosts (id, status, approved) SELECT unnest(CAST(:ids AS uuid[])), 'online', true"
            ),
            {"ids": host_ids},
        )
    return runtime, host_ids


async def measure(
    nats_url: str, database_url: str, islands: int, rate: float, seconds: float, pg_marker: str | None = None
) -> dict[str, float]:
    import nats
    from sqlalchemy import text

    from coordinator.hosts import service as hosts
    from coordinator.hosts.fleet import FleetView
    from coordinator.hosts.flusher import HeartbeatFlusher
    from coordinator.nats.host_handler import HostHandler
    from coordinator.telemetry import metrics

    runtime, host_ids = await known_fleet(nats_url, database_url, islands)
    fleet = FleetView()
    async with runtime.db.session() as session:
        await hosts.load_fleet(session, fleet)
    flusher = HeartbeatFlusher(runtime.db, approval_required=False, interval=2.0)
    handler = HostHandler(runtime, fleet, flusher)
    nc = await nats.connect(nats_url)
    await handler.start(nc)
    flush_task = asyncio.create_task(flusher.run(lambda: None))

    publisher = multiprocessing.get_context("spawn").Process(
        target=publish_heartbeats, args=(nats_url, host_ids, rate, seconds + 2)
    )
    publisher.start()
    await asyncio.sleep(2)  # warm-up: connections, first flushes
    beats0, flush_n0, flush_s0 = (
        metrics.heartbeats._value.get(),
        flusher.flushes,
        metrics.heartbeat_flush_seconds._sum.get(),
    )
    pg0 = postgres_cpu(pg_marker)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    pg_cpu = postgres_cpu(pg_marker) - pg0
    beats = metrics.heartbeats._value.get() - beats0
    flushes = flusher.flushes - flush_n0
    flush_seconds = metrics.heartbeat_flush_seconds._sum.get() - flush_s0
    await asyncio.to_thread(publisher.join)
    await flusher.run_once()
    flush_task.cancel()
    await handler.stop()
    await nc.drain()
    async with runtime.db.session() as session:
        stored = (
            await session.execute(text("SELECT count(*) FROM hosts WHERE last_heartbeat IS NOT NULL"))
        ).scalar_one()
    await runtime.db.dispose()
    achieved = beats / wall
    return {
        "islands": islands,
        "target_rate": rate,
        "achieved_rate": achieved,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "core_fraction": cpu / wall,
        "core_fraction_per_1000_per_s": (cpu / wall) / (achieved / 1000),
        "cpu_ms_per_1000_heartbeats": cpu / beats * 1_000_000,
        "postgres_core_fraction": pg_cpu / wall if pg_marker else float("nan"),
        "flushes": flushes,
        "mean_flush_ms": flush_seconds / flushes * 1000 if flushes else 0.0,
        "hosts_with_heartbeat_in_db": stored,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--islands", type=int, default=10_000)
    parser.add_argument(
        "--rate", type=float, default=1_000.0, help="heartbeats per second (10k Islands / 10 s)"
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    from coordinator.devstack import EmbeddedNats, EmbeddedPostgres
    from coordinator.repo.migrate import upgrade

    with tempfile.TemporaryDirectory(prefix="bench-heartbeats-") as tmp:
        nats_server = pg = None
        nats_url = os.environ.get("NATS_URL")
        database_url = os.environ.get("COORDINATOR_TEST_DATABASE_URL")
        try:
            if not nats_url:
                nats_server = EmbeddedNats(Path(tmp) / "nats")
                nats_url = nats_server.start()
            if not database_url:
                pg = EmbeddedPostgres(Path(tmp) / "pg")
                pg.start()
                database_url = pg.ensure_database("bench")
            upgrade(database_url)
            marker = str(Path(tmp) / "pg") if pg is not None else None
            result = asyncio.run(
                measure(nats_url, database_url, args.islands, args.rate, args.seconds, marker)
            )
        finally:
            if nats_server is not None:
                nats_server.stop()
            if pg is not None:
                pg.stop()
    for key, value in result.items():
        print(f"{key:32s} {value:,.3f}" if isinstance(value, float) else f"{key:32s} {value}")


if __name__ == "__main__":
    main()
