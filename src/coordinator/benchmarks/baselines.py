"""Same-run baselines: the raw cost of the engines we build on, so scenario results become ratios."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import httpx
import nats
import psycopg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from coordinator.benchmarks.clients import SseCounter, sse_client
from coordinator.benchmarks.harness import BenchEnv, Load, Result, Stopwatch, latency_summary, scenario
from coordinator.benchmarks.system import own_cpu_seconds
from coordinator.config import libpq_url
from coordinator.devstack import free_port

# Claims one (or :batch) queued rows, the shape of every job-queue claim.
CLAIM_SQL = """
UPDATE bench_queue SET state = 'claimed'
WHERE id IN (SELECT id FROM bench_queue WHERE state = 'queued' ORDER BY id FOR UPDATE SKIP LOCKED LIMIT %s)
RETURNING id
"""


async def _prepare_queue(conninfo: str, rows: int) -> None:
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute("DROP TABLE IF EXISTS bench_queue")
        await conn.execute(
            "CREATE TABLE bench_queue (id bigserial PRIMARY KEY, state text NOT NULL, payload jsonb)"
        )
        await conn.execute("CREATE INDEX ON bench_queue (id) WHERE state = 'queued'")
        await conn.execute(
            "INSERT INTO bench_queue (state, payload) SELECT 'queued', '{\"prompt\":\"hi\"}' "
            "FROM generate_series(1, %s)",
            (rows,),
        )


async def _claim_all(conninfo: str, batch: int) -> tuple[int, float]:
    claimed = 0
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        watch = Stopwatch()
        while True:
            async with conn.transaction():
                got = len(await (await conn.execute(CLAIM_SQL, (batch,))).fetchall())
            if got == 0:
                break
            claimed += got
        return claimed, watch.elapsed


@scenario(
    "baseline_claim", "raw PostgreSQL claim cycle (FOR UPDATE SKIP LOCKED), single and batched", baseline=True
)
async def baseline_claim(env: BenchEnv) -> Result:
    conninfo = libpq_url(env.database_url)
    rows = 3000 if env.quick else 20000
    metrics: dict[str, float] = {}
    for batch in (1, 100):
        await _prepare_queue(conninfo, rows)
        claimed, elapsed = await _claim_all(conninfo, batch)
        metrics[f"rows_per_s_batch_{batch}"] = round(claimed / elapsed, 1)
    return Result("baseline_claim", {"rows": rows, "batches": [1, 100]}, metrics)


@scenario(
    "baseline_debit", "raw single-row debit: one hot account vs many accounts, 32 writers", baseline=True
)
async def baseline_debit(env: BenchEnv) -> Result:
    conninfo = libpq_url(env.database_url)
    per_worker = 60 if env.quick else 300
    writers = 32
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute("DROP TABLE IF EXISTS bench_accounts")
        await conn.execute("CREATE TABLE bench_accounts (id int PRIMARY KEY, credits numeric NOT NULL)")
        await conn.execute(
            "INSERT INTO bench_accounts SELECT g, 1e12 FROM generate_series(1, %s) g", (writers,)
        )
    metrics: dict[str, float] = {}
    series: dict[str, list[float]] = {}
    for label, hot in (("hot", True), ("many", False)):
        latencies: list[float] = []

        async def writer(n: int, account_id: int, latencies: list[float] = latencies) -> None:
            async with await psycopg.AsyncConnection.connect(conninfo) as conn:
                for _ in range(n):
                    started = time.perf_counter()
                    async with conn.transaction():
                        await conn.execute(
                            "UPDATE bench_accounts SET credits = credits - 1 WHERE id = %s AND credits >= 1",
                            (account_id,),
                        )
                    latencies.append(time.perf_counter() - started)

        watch = Stopwatch()
        await asyncio.gather(*[writer(per_worker, 1 if hot else i + 1) for i in range(writers)])
        elapsed = watch.elapsed
        summary = latency_summary(latencies)
        metrics[f"{label}_debits_per_s"] = round(len(latencies) / elapsed, 1)
        metrics[f"{label}_p99_ms"] = summary["p99_ms"]
        series[f"{label} debit latency (ms)"] = [x * 1000 for x in latencies]
    return Result("baseline_debit", {"writers": writers, "per_writer": per_worker}, metrics, series)


@scenario(
    "baseline_statement",
    "CPU of one primary-key SELECT through each database layer: raw psycopg, SQLAlchemy Core, ORM session",
    baseline=True,
)
async def baseline_statement(env: BenchEnv) -> Result:
    """What a statement costs the coordinator's process before any of its own code runs: the numbers that
    turn "statements per job" into CPU per job."""
    count = 1000 if env.quick else 5000
    conninfo = libpq_url(env.database_url)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_lookup (id int PRIMARY KEY)")
        await conn.execute("INSERT INTO bench_lookup VALUES (1) ON CONFLICT DO NOTHING")
    query = text("SELECT id FROM bench_lookup WHERE id = :id")
    metrics: dict[str, float] = {}

    async def measure(label: str, n: int, body: Callable[[], Awaitable[None]]) -> None:
        for _ in range(20):  # warm caches and prepared statements
            await body()
        started = own_cpu_seconds()
        for _ in range(n):
            await body()
        metrics[label] = round((own_cpu_seconds() - started) / n * 1e6, 1)

    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:

        async def raw() -> None:
            await (await conn.execute("SELECT id FROM bench_lookup WHERE id = %s", (1,))).fetchall()

        await measure("psycopg_us_per_statement", count, raw)
    engine = create_async_engine(env.database_url)
    sessions = async_sessionmaker(engine)
    try:
        async with engine.connect() as connection:

            async def core() -> None:
                (await connection.execute(query, {"id": 1})).all()

            await measure("sqlalchemy_core_us_per_statement", count, core)
        async with sessions() as session:

            async def in_session() -> None:
                (await session.execute(query, {"id": 1})).all()

            await measure("sqlalchemy_session_us_per_statement", count, in_session)

        async def transaction() -> None:
            async with sessions() as session, session.begin():
                (await session.execute(query, {"id": 1})).all()

        await measure("sqlalchemy_transaction_us", count // 4, transaction)
    finally:
        await engine.dispose()
    return Result("baseline_statement", {"statements": count, "transactions": count // 4}, metrics)


@scenario("baseline_jetstream", "raw JetStream publish, awaited one by one and windowed", baseline=True)
async def baseline_jetstream(env: BenchEnv) -> Result:
    count = 2000 if env.quick else 10000
    window = 256
    nc = await nats.connect(env.nats_url)
    js = nc.jetstream()
    try:
        await js.delete_stream("BENCH")
    except Exception:  # absent on first run
        pass
    await js.add_stream(name="BENCH", subjects=["bench.>"])
    payload = b'{"job_id":"x","input":{"prompt":"hello"},"lease_expires":1}'
    watch = Stopwatch()
    for i in range(count):
        await js.publish(f"bench.{i % 16}", payload)
    awaited = count / watch.elapsed
    watch = Stopwatch()
    for start in range(0, count, window):
        await asyncio.gather(*[js.publish(f"bench.{i % 16}", payload) for i in range(start, start + window)])
    windowed = count / watch.elapsed
    await js.delete_stream("BENCH")
    await nc.close()
    return Result(
        "baseline_jetstream",
        {"messages": count, "window": window},
        {"awaited_msgs_per_s": round(awaited, 1), "windowed_msgs_per_s": round(windowed, 1)},
    )


async def run_sse_fanout(
    host: str,
    port: int,
    path: str | list[str],
    clients: int,
    events: int,
    publish: Callable[[int], Awaitable[None]],
    headers: dict[str, str] | None = None,
    only: bytes | None = None,
    sample_every: int | None = None,
    load: Load | None = None,
) -> dict[str, float]:
    """Connect `clients` SSE readers, trigger `events` events, and measure delivery rate and latency.

    With `load`: every expected event is offered when publishing starts, each delivered one completes
    (sampled every 0.1 s), and a reader that stopped short counts as `stream_incomplete`."""
    counters = [SseCounter(expected=events) for _ in range(clients)]
    connected = [asyncio.Event() for _ in range(clients)]
    paths = [path] * clients if isinstance(path, str) else [path[i % len(path)] for i in range(clients)]
    tasks = [
        asyncio.create_task(
            sse_client(
                host,
                port,
                p,
                c,
                headers,
                sample_every=sample_every or max(1, events // 20),
                connected=e,
                only=only,
            )
        )
        for c, e, p in zip(counters, connected, paths, strict=True)
    ]
    await asyncio.wait_for(asyncio.gather(*[e.wait() for e in connected]), 60)
    await asyncio.sleep(0.2)
    watch = Stopwatch()
    sampler = None
    if load is not None:
        load.begin()
        load.offer(clients * events)

        async def sample() -> None:
            seen = 0
            while True:
                await asyncio.sleep(0.1)
                now = sum(c.received for c in counters)
                load.complete(now - seen)
                seen = now

        sampler = asyncio.create_task(sample())
    await publish(events)
    await asyncio.wait_for(asyncio.gather(*[c.done.wait() for c in counters]), 300)
    elapsed = watch.elapsed
    for task in tasks:
        task.cancel()
    delivered = sum(c.received for c in counters)
    if load is not None and sampler is not None:
        sampler.cancel()
        load.complete(delivered - load.totals["completed"])
        load.end()
        if short := sum(c.received < c.expected for c in counters):
            load.refuse("stream_incomplete", short)
    latencies = [x for c in counters for x in c.latencies]
    summary = latency_summary(latencies)
    return {
        "events_per_s": round(delivered / elapsed, 1),
        "delivered": delivered,
        "latency_p50_ms": summary["p50_ms"],
        "latency_p99_ms": summary["p99_ms"],
    }


@scenario(
    "baseline_sse", "raw SSE fan-out of a bare Starlette endpoint to 100 and 1,000 clients", baseline=True
)
async def baseline_sse(env: BenchEnv) -> Result:
    port = free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - a short-lived server for the baseline
        [sys.executable, "-m", "coordinator.benchmarks.sse_server", str(port)]
    )
    metrics: dict[str, float] = {}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(100):
                try:
                    await client.get("/count")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            # (label, clients, events, seconds between events): the bursts and the paced run of
            # `sse_streaming`, through the same clients, so its latency is read beside this one's.
            runs = (
                ("c100", 100, 200 if env.quick else 1000, 0.0),
                ("c1000", 1000, 20 if env.quick else 100, 0.0),
                ("paced_c100", 100, 50 if env.quick else 300, 0.01),
            )
            for label, clients, events, pace in runs:

                async def publish(n: int, client: httpx.AsyncClient = client, pace: float = pace) -> None:
                    await client.post("/publish", params={"n": n, "pace": pace}, timeout=120)

                result = await run_sse_fanout(
                    "127.0.0.1", port, "/stream", clients, events, publish, sample_every=1 if pace else None
                )
                for key, value in result.items():
                    metrics[f"{label}_{key}"] = value
    finally:
        proc.terminate()
        proc.wait(10)
    return Result(
        "baseline_sse", {"fanouts": "100 clients and 1,000 clients; 100 clients at 100 events/s"}, metrics
    )
