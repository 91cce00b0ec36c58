"""SIGKILL of `coordinator serve` in the middle of dispatch: no job is lost and none is charged twice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nats
from nats.js.errors import NotFoundError, ServiceUnavailableError
from sqlalchemy import text

from coordinator.app import build_runtime
from coordinator.devstack import free_port
from coordinator.jobs.output_check import INCOMPLETE_OUTPUT
from coordinator.runtime import Runtime
from tests.conftest import make_settings
from tests.factories import Consumer, make_consumer, seed_cargos
from tests.fake_island import FakeIsland
from tests.job_stack import CHAT, eventually
from tests.job_support import assert_money_conserved, make_island

ISLANDS = 6
SLOTS_PER_ISLAND = 2
FIRST_WAVE = 300
SECOND_WAVE = 40


def start_coordinator(database_url: str, nats_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "COORDINATOR_ENV": "test",
        "COORDINATOR_SECRET_KEY": "test-secret",
        "COORDINATOR_PORT": str(port),
        "COORDINATOR_LOG_FORMAT": "console",
        "COORDINATOR_JOB_START_TIMEOUT_SECONDS": "3",
        "COORDINATOR_LEASE_SWEEP_INTERVAL_SECONDS": "0.5",
        # A few hundred submits in seconds from one key: far above the per-key quota on purpose.
        "COORDINATOR_RATE_LIMIT_PER_MINUTE": "100000",
        # ... and above the unverified account's active-job and daily-spend quotas, for the same reason.
        "COORDINATOR_ACTIVE_JOBS_UNVERIFIED": "100000",
        "COORDINATOR_DAILY_SPEND_UNVERIFIED": "100000000",
    }
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
    )


async def wait_healthy(client: httpx.AsyncClient, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "coordinator exited during start-up"
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get("/healthz")).status_code == 200:
                return
        await asyncio.sleep(0.1)
    raise AssertionError("coordinator did not become healthy")


async def wait_for_jobs_stream(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:

        async def exists() -> bool:
            try:
                await nc.jetstream().stream_info("JOBS")
            except (NotFoundError, ServiceUnavailableError, nats.errors.TimeoutError):
                return False  # not created yet, or a cluster still electing its JetStream leader
            return True

        await eventually(exists, within=30)
    finally:
        await nc.close()


async def submit_many(client: httpx.AsyncClient, consumer: Consumer, count: int) -> list[str]:
    """Submit `count` jobs, 16 at a time; requests that fail because the process died are skipped."""
    accepted: list[str] = []
    gate = asyncio.Semaphore(16)

    async def one() -> None:
        async with gate:
            with contextlib.suppress(httpx.HTTPError):
                response = await client.post("/api/v1/jobs", headers=consumer.headers, json=CHAT)
                if response.status_code == 201:
                    accepted.append(response.json()["data"]["id"])

    await asyncio.gather(*(one() for _ in range(count)))
    return accepted


async def counts(runtime: Runtime) -> dict[str, int]:
    async with runtime.db.session() as session:
        rows = await session.execute(text("SELECT state, count(*) FROM jobs GROUP BY state"))
        return {r[0]: int(r[1]) for r in rows}


async def test_sigkill_mid_dispatch_loses_no_job_and_charges_none_twice(
    database_url: str, nats_url: str, tmp_path: Path
) -> None:
    runtime = build_runtime(make_settings(database_url))
    await seed_cargos(runtime)
    async with runtime.db.transaction() as session:
        await session.execute(text("UPDATE workloads SET cold_start_seconds = 0"))
    consumer = await make_consumer(runtime)
    fleet = [
        FakeIsland(nats_url, delay=0.2, heartbeat_every=1.0, max_concurrent=SLOTS_PER_ISLAND)
        for _ in range(ISLANDS)
    ]
    for island in fleet:
        await make_island(runtime, host_id=island.host_id, max_concurrent=SLOTS_PER_ISLAND)
    port, log = free_port(), tmp_path / "coordinator.log"
    proc = start_coordinator(database_url, nats_url, port, log)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            await wait_healthy(client, proc)
            await wait_for_jobs_stream(nats_url)  # created by the NATS subtree, after HTTP is up
            for island in fleet:
                await island.start()
            submitting = asyncio.create_task(submit_many(client, consumer, FIRST_WAVE))

            async def mid_dispatch() -> dict[str, int] | None:
                c = await counts(runtime)
                active = c.get("assigned", 0) + c.get("running", 0)
                enough = sum(c.values()) >= FIRST_WAVE // 2
                return c if enough and c.get("queued", 0) >= 5 and active >= 5 else None

            at_kill = await eventually(mid_dispatch, within=30, interval=0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            first = await submitting
            assert at_kill["queued"] >= 5 and first  # killed with work queued and in flight

            proc = start_coordinator(database_url, nats_url, port, log)
            await wait_healthy(client, proc)
            second = await submit_many(client, consumer, SECOND_WAVE)
            assert len(second) == SECOND_WAVE

            async def all_finished() -> dict[str, int] | None:
                # A job requeued after the kill whose earlier attempt's `succeeded` comes late has no
                # complete output for that success: it fails with a refund, never a truncated success.
                c = await counts(runtime)
                return c if set(c) <= {"succeeded", "failed"} and c.get("succeeded") else None

            final = await eventually(all_finished, within=150, interval=0.2)
        async with runtime.db.session() as session:
            ids = {str(r[0]) for r in await session.execute(text("SELECT id FROM jobs"))}
            charges = (
                await session.execute(
                    text("SELECT count(*), count(DISTINCT job_id) FROM transactions WHERE type = 'charge'")
                )
            ).one()
            earnings = await session.scalar(text("SELECT count(*) FROM host_earnings"))
            failures = set(
                (await session.scalars(text("SELECT error FROM jobs WHERE state = 'failed'"))).all()
            )
        assert set(first) | set(second) <= ids  # every accepted job exists and finished
        assert sum(final.values()) == len(ids) >= len(first) + len(second)
        assert failures <= {INCOMPLETE_OUTPUT}, failures
        assert tuple(charges) == (len(ids), len(ids))  # exactly one charge per job
        assert earnings == final["succeeded"]
        await assert_money_conserved(runtime)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for island in fleet:
            await island.stop()
        await runtime.db.dispose()
