"""Connect cost through the auth callout: how fast Islands with their own credentials can (re)connect,
extrapolated to a fleet of 10,000 reconnecting at once (docs/decisions/nats-auth.md)."""

from __future__ import annotations

import asyncio
import time
import uuid

import nats
from sqlalchemy import text

from coordinator.accounts.service import digest
from coordinator.app import build_runtime
from coordinator.benchmarks.harness import BenchEnv, Load, Result, latency_summary, scenario
from coordinator.config import Settings
from coordinator.devstack import EmbeddedNats, NatsAuth
from coordinator.nats.auth_callout import AuthCallout

SECRET = "bench-secret"
FLEET = 10_000


@scenario("nats_auth_connect", "Island connects/s through the NATS auth callout; a 10,000-Island reconnect")
async def nats_auth_connect(env: BenchEnv) -> Result:
    islands, concurrency = (200, 20) if env.quick else (2000, 50)
    auth = NatsAuth.generate()
    server = EmbeddedNats(env.root / "nats-auth-bench", auth=auth)
    server.start()
    settings = Settings(
        env="test",
        secret_key=SECRET,
        database_url=env.fresh_database("s_nats_auth"),
        nats_url=server.coordinator_url,
        nats_auth_issuer_seed=auth.issuer_seed,
    )
    runtime = build_runtime(settings)
    try:
        ids = [uuid.uuid4() for _ in range(islands)]
        async with runtime.db.transaction() as session:
            for host_id in ids:
                await session.execute(
                    text("INSERT INTO hosts (id, status, approved) VALUES (:id, 'offline', true)"),
                    {"id": host_id},
                )
                await session.execute(
                    text("INSERT INTO host_nats_credentials (host_id, secret_digest) VALUES (:id, :d)"),
                    {"id": host_id, "d": digest(SECRET, str(host_id))},  # password = the id, for the bench
                )
        runtime.nats = await nats.connect(server.coordinator_url)
        callout = AuthCallout(runtime)
        await callout.start(runtime.nats)
        latencies: list[float] = []
        load = Load()  # a CONNECT offered, completed once the server accepted it through the callout
        queue: asyncio.Queue[uuid.UUID] = asyncio.Queue()
        for host_id in ids:
            queue.put_nowait(host_id)

        async def worker() -> None:
            while not queue.empty():
                host_id = queue.get_nowait()
                started = time.perf_counter()
                load.offer()
                try:
                    nc = await nats.connect(
                        f"nats://{host_id}:{host_id}@127.0.0.1:{server.port}",
                        allow_reconnect=False,
                        max_reconnect_attempts=0,
                    )
                except Exception as exc:  # an unanswered or refused CONNECT is the datum
                    load.refuse(f"connect_{type(exc).__name__}")
                    continue
                latencies.append(time.perf_counter() - started)
                load.complete()
                await nc.close()

        wall = time.perf_counter()
        load.begin()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        load.end()
        wall = time.perf_counter() - wall
        await callout.stop()
        await runtime.nats.close()
    finally:
        await runtime.db.dispose()
        server.stop()
    rate = islands / wall
    return Result(
        "nats_auth_connect",
        {"islands": islands, "concurrent_connects": concurrency},
        {
            "connects_per_s": round(rate, 1),
            "granted": callout.granted,
            "seconds_for_10000_islands": round(FLEET / rate, 1),
            **latency_summary(latencies),
        },
        target="a fleet of 10,000 Islands reconnects through the callout within 60 s",
        primary="connects_per_s",
        met=FLEET / rate <= 60,
        notes="One callout (one process, one database look-up per CONNECT); clients and server share the "
        "machine. Replicas answer in one queue group, so the rate scales with them.",
    ).with_load(load)
