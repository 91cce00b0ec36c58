"""The black-box stack the benchmark scenarios drive: a `coordinator serve` process with its accounts, a
simulated fleet on NATS, HTTP submits, and the database checks for lost or double-charged jobs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import nats
import nats.js.errors
import psycopg
import structlog

from coordinator.benchmarks.fake_island import FakeFleet
from coordinator.benchmarks.harness import BenchEnv, Load
from coordinator.benchmarks.profile import Sampler, summarise
from coordinator.benchmarks.system import CoordinatorProcess, make_accounts
from coordinator.config import libpq_url
from coordinator.protocol import subjects

log = structlog.get_logger(__name__)

CHAT = {"workload": "llm-chat", "input": {"prompt": "hello"}}


@dataclass
class Stack:
    coordinator: CoordinatorProcess
    keys: list[str]
    database_url: str

    @property
    def key(self) -> str:
        return self.keys[0]

    @property
    def headers(self) -> dict[str, str]:
        return self.headers_for(0)

    def headers_for(self, account: int) -> dict[str, str]:
        key = self.keys[account % len(self.keys)]
        return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


@asynccontextmanager
async def stack(env: BenchEnv, name: str, accounts: int = 1) -> AsyncIterator[Stack]:
    """A coordinator on a fresh database with `accounts` verified consumers of `BENCH_CREDITS` each."""
    database_url = env.fresh_database(name)
    emails = [f"{name}-{i}@bench.local" if i else f"{name}@bench.local" for i in range(accounts)]
    keys = await make_accounts(database_url, emails)
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute("UPDATE users SET verification_status = 'verified'")
    await _reset_streams(env.nats_url)
    coordinator = CoordinatorProcess(database_url, env.nats_url)
    await coordinator.start()
    sampler = None
    if env.profile_dir is not None and coordinator.proc is not None:
        sampler = Sampler(coordinator.proc.pid, env.profile_dir / f"{name}.txt")
        sampler.start()
    try:
        yield Stack(coordinator, keys, database_url)
    finally:
        coordinator.stop()
        if sampler is not None:
            sampler.wait()
            if sampler.output.exists():
                env.profiles[name] = summarise(sampler.output.read_text())


async def _reset_streams(nats_url: str) -> None:
    """Drop the job streams (and their consumers) a previous coordinator left: each stack starts clean.
    (JOB_OUTPUT too: a backlog of the previous stack's chunks, for jobs this stack's database never had,
    kept the next coordinator's output consumer busy past the success grace, and every lifecycle job
    failed "Output incomplete".)"""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for stream in (subjects.JOBS_STREAM, subjects.STATUS_STREAM, subjects.OUTPUT_STREAM):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(stream)
    finally:
        await nc.close()


def _db_checks(database_url: str, submitted: list[str]) -> dict[str, int]:
    """Lost = submitted but not terminal; double = more than one charge (or refund) for a job."""
    with psycopg.connect(libpq_url(database_url)) as conn:
        states: dict[str, int] = dict(
            conn.execute(
                "SELECT state, count(*) FROM jobs WHERE id = ANY(%s::uuid[]) GROUP BY state", (submitted,)
            ).fetchall()
        )
        double = conn.execute(
            "SELECT count(*) FROM (SELECT job_id, type FROM transactions WHERE type IN ('charge','refund') "
            "GROUP BY job_id, type HAVING count(*) > 1) d"
        ).fetchone()
        unreconciled = conn.execute(
            "SELECT count(*) FROM (SELECT u.id FROM users u LEFT JOIN transactions t ON t.user_id = u.id "
            "GROUP BY u.id, u.credits HAVING u.credits <> COALESCE(SUM(t.amount), 0)) x"
        ).fetchone()
    terminal = sum(v for k, v in states.items() if k in ("succeeded", "failed", "cancelled", "timeout"))
    return {
        "submitted": len(submitted),
        "found": sum(states.values()),
        "succeeded": states.get("succeeded", 0),
        "lost": len(submitted) - terminal,
        "double_charged": int(double[0]) if double else -1,
        "unreconciled_users": int(unreconciled[0]) if unreconciled else -1,
    }


def _failure_reasons(database_url: str, submitted: list[str]) -> dict[str, int]:
    """The errors of the jobs that did not succeed, most frequent first (empty when none failed)."""
    with psycopg.connect(libpq_url(database_url)) as conn:
        rows = conn.execute(
            "SELECT left(coalesce(error, state), 120), count(*) FROM jobs WHERE id = ANY(%s::uuid[])"
            " AND state IN ('failed', 'timeout', 'cancelled') GROUP BY 1 ORDER BY 2 DESC LIMIT 5",
            (submitted,),
        ).fetchall()
    return {str(reason): int(count) for reason, count in rows}


def _phase_p50_ms(database_url: str, submitted: list[str]) -> dict[str, float]:
    """Median time a job spent in each phase, from the coordinator's own timestamps: where a closed-loop
    run's latency (and so its throughput) goes."""
    with psycopg.connect(libpq_url(database_url)) as conn:
        row = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY assigned_at - created_at),"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY started_at - assigned_at),"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY completed_at - started_at)"
            " FROM jobs WHERE id = ANY(%s::uuid[]) AND state = 'succeeded'",
            (submitted,),
        ).fetchone()
    names = ("queued_p50_ms", "assigned_to_running_p50_ms", "running_to_settled_p50_ms")
    return {
        name: round(value.total_seconds() * 1000, 1)
        for name, value in zip(names, row or (), strict=False)
        if value is not None
    }


def _host_count(database_url: str) -> int:
    with psycopg.connect(libpq_url(database_url)) as conn:
        row = conn.execute("SELECT count(*) FROM hosts WHERE last_heartbeat_at IS NOT NULL").fetchone()
    return int(row[0]) if row else 0


# A request unanswered for this long counts as a timeout (refused): the run is invalid, not just slow.
REQUEST_TIMEOUT_SECONDS = 30.0


def http_client(s: Stack) -> httpx.AsyncClient:
    """Keep-alive connections for every concurrent submitter (httpx's default keeps 20: a 21st submitter
    would open and close a connection per request and measure that instead)."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(base_url=s.coordinator.url, timeout=REQUEST_TIMEOUT_SECONDS, limits=limits)


@asynccontextmanager
async def http_clients(s: Stack, count: int) -> AsyncIterator[list[httpx.AsyncClient]]:
    """A client of its own for each of `count` concurrent submitters, like as many SDK instances. (One
    client shared by 32 submitters cost the bench 2.6 ms of CPU per request: httpcore checks every pooled
    connection, two system calls each, to send each request.)"""
    async with contextlib.AsyncExitStack() as clients:
        yield [await clients.enter_async_context(http_client(s)) for _ in range(count)]


async def start_fleet(s: Stack, fleet: FakeFleet) -> None:
    """Start the fleet and wait (up to a minute) until the coordinator has stored every Island's heartbeat."""
    await fleet.start()
    deadline = time.monotonic() + 60
    while (stored := _host_count(s.database_url)) < fleet.size:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the coordinator stored {stored} of {fleet.size} Islands")
        await asyncio.sleep(0.1)


async def _submit(
    client: httpx.AsyncClient, headers: dict[str, str], load: Load | None = None
) -> tuple[str | None, float]:
    """One submission: the job id (None when refused or unanswered) and its latency; counted in `load`
    as offered, then accepted or refused by cause (`http_<status>`, `timeout`, `transport_error`)."""
    if load is not None:
        load.offer()
    started = time.perf_counter()
    try:
        response = await client.post("/api/v1/jobs", json=CHAT, headers=headers)
    except httpx.TimeoutException:
        cause = "timeout"
    except httpx.TransportError as exc:
        cause = "transport_error"
        log.warning("bench.submit_failed", error=repr(exc))
    else:
        if response.status_code in (200, 201):
            if load is not None:
                load.accept()
            return str(response.json()["data"]["id"]), time.perf_counter() - started
        cause = f"http_{response.status_code}"
        log.warning("bench.submit_refused", status=response.status_code, body=response.text[:200])
    if load is not None:
        load.refuse(cause)
    return None, time.perf_counter() - started


def fleet_failures(fleet: FakeFleet, load: Load) -> None:
    """The simulated Islands' publishes that raised are unanswered work too."""
    if fleet.publish_failures:
        load.refuse("publish_failed", fleet.publish_failures)
