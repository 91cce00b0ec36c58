"""The targets of issue 7, measured black-box: a `coordinator serve` process, a simulated fleet on NATS,
consumers over HTTP/SSE, and the database checked afterwards for lost or double-charged jobs (the stack
they drive: `benchmarks.stack`)."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import structlog

from coordinator.benchmarks.baselines import run_sse_fanout
from coordinator.benchmarks.fake_island import FakeFleet, JobBehaviour, heartbeat_flood
from coordinator.benchmarks.harness import BenchEnv, Load, Result, Stopwatch, latency_summary, scenario
from coordinator.benchmarks.stack import (
    _db_checks,
    _failure_reasons,
    _host_count,
    _phase_p50_ms,
    _submit,
    fleet_failures,
    http_client,
    http_clients,
    stack,
    start_fleet,
)
from coordinator.benchmarks.system import BENCH_CREDITS, MachineCpu
from coordinator.config import libpq_url

log = structlog.get_logger(__name__)


@scenario("submit_to_assign", "submit → AssignJob received by the Island, idle fleet")
async def submit_to_assign(env: BenchEnv) -> Result:
    count = 30 if env.quick else 300
    assigned: dict[str, float] = {}
    load = Load(progress="assigned")

    def on_assigned(job: str, at: float) -> None:
        assigned[job] = at
        load.assign()

    async with stack(env, "s_assign") as s:
        fleet = FakeFleet(env.nats_url, 4, on_assigned=on_assigned)
        await start_fleet(s, fleet)
        latencies: list[float] = []
        async with http_client(s) as client:
            load.begin()
            for _ in range(count):
                started = time.perf_counter()
                job_id, _ = await _submit(client, s.headers, load)
                if job_id is None:
                    continue
                deadline = time.monotonic() + 10
                while job_id not in assigned and time.monotonic() < deadline:
                    await asyncio.sleep(0.001)
                if job_id in assigned:
                    latencies.append(assigned[job_id] - started)
                else:
                    load.refuse("not_assigned")
            load.end()
        await fleet.stop()
        fleet_failures(fleet, load)
    summary = latency_summary(latencies)
    raw_publish_ms = 1000 / env.baselines["baseline_jetstream"].metrics["awaited_msgs_per_s"]
    return Result(
        "submit_to_assign",
        {"jobs": count, "islands": 4},
        {**summary, "assigned": len(latencies), "raw_jetstream_publish_ms": round(raw_publish_ms, 3)},
        {"submit→assign (ms)": [x * 1000 for x in latencies]},
        target="p50 ≤ 5 ms, p99 ≤ 20 ms",
        primary="p50_ms",
        met=len(latencies) == count and summary["p50_ms"] <= 5 and summary["p99_ms"] <= 20,
    ).with_load(load)


@scenario("dispatcher", "dispatcher alone: a backlog of queued jobs → assigned + published")
async def dispatcher(env: BenchEnv) -> Result:
    count = 300 if env.quick else 3000
    assigned: dict[str, float] = {}
    backlog, drain = Load(progress="accepted"), Load(progress="assigned")

    def on_assigned(job: str, at: float) -> None:
        assigned[job] = at
        drain.assign()

    async with stack(env, "s_dispatch") as s:
        # Islands with no free slot: every job waits in the queue. They hold what they are given (the jobs
        # they would stream meanwhile would load the coordinator's consumers, not its dispatcher).
        behaviour = JobBehaviour(hold=True)
        fleet = FakeFleet(env.nats_url, 8, max_concurrent=0, behaviour=behaviour, on_assigned=on_assigned)
        await start_fleet(s, fleet)
        sem = asyncio.Semaphore(32)
        async with http_client(s) as client:

            async def one() -> str | None:
                async with sem:
                    return (await _submit(client, s.headers, backlog))[0]

            backlog.begin()
            submitted = [j for j in await asyncio.gather(*[one() for _ in range(count)]) if j]
            backlog.end()
        # Capacity appears: the backlog drains.
        fleet.max_concurrent = count
        drain.begin()
        drain.offer(len(submitted))
        opened = time.perf_counter()
        await fleet.heartbeat_all()
        deadline = time.monotonic() + 120
        while len(assigned) < len(submitted) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        drain.end()
        if missing := len(submitted) - len(assigned):
            drain.refuse("not_assigned", missing)
        last = max(assigned.values()) if assigned else opened
        await fleet.stop()
        fleet_failures(fleet, drain)
    rate = len(assigned) / max(last - opened, 1e-9)
    claim = env.baselines["baseline_claim"].metrics["rows_per_s_batch_100"]
    publish = env.baselines["baseline_jetstream"].metrics["windowed_msgs_per_s"]
    return Result(
        "dispatcher",
        {"backlog": count, "islands": 8},
        {
            "jobs_per_s": round(rate, 1),
            "assigned": len(assigned),
            "ratio_to_batched_claim": round(rate / claim, 3),
            "ratio_to_windowed_publish": round(rate / publish, 3),
        },
        target="≥ 5,000 jobs/s and ≥ 20% of the windowed raw JetStream publish rate",
        primary="jobs_per_s",
        met=rate >= 5000 and rate >= 0.2 * publish,
    ).with_load(("backlog", backlog), ("drain", drain))


# Lifecycle load: one account per submitter (one shared balance row would measure `hot_account` instead),
# each submitter keeping at most this many jobs unfinished. A submitter that only waited for its HTTP
# answer would offer more than the pipeline completes: the backlog of unsettled jobs grows until it holds
# every Island slot, and the run measures the backlog instead of the throughput.
LIFECYCLE_SUBMITTERS = 32
LIFECYCLE_IN_FLIGHT = 4
TERMINAL = ("succeeded", "failed", "cancelled", "timeout")


@scenario("lifecycle", "full lifecycle: HTTP submit → charge → dispatch → 20 tokens → settle")
async def lifecycle(env: BenchEnv) -> Result:
    duration = 6.0 if env.quick else 30.0
    submitters, window = LIFECYCLE_SUBMITTERS, LIFECYCLE_IN_FLIGHT
    load = Load(progress="completed")
    async with stack(env, "s_lifecycle", accounts=submitters) as s:
        fleet = FakeFleet(
            env.nats_url,
            8,
            max_concurrent=256,
            behaviour=JobBehaviour(tokens=20),
            on_assigned=lambda job, t: load.assign(),
        )
        await start_fleet(s, fleet)
        submitted: list[str] = []
        # job id → the window slot of the submitter that is waiting for it
        unfinished: dict[str, asyncio.Semaphore] = {}
        slots = [asyncio.Semaphore(window) for _ in range(submitters)]
        load.begin()
        machine = MachineCpu(s.coordinator, env.postgres.pid, env.nats.pid)
        machine_before = machine.snapshot()
        stop_at = time.monotonic() + duration
        conninfo = libpq_url(s.database_url)
        async with (
            http_clients(s, submitters) as clients,
            await psycopg.AsyncConnection.connect(conninfo) as conn,
        ):
            await conn.set_autocommit(True)

            async def submitter(index: int) -> None:
                while (left := stop_at - time.monotonic()) > 0:
                    try:
                        await asyncio.wait_for(slots[index].acquire(), left)
                    except TimeoutError:
                        return
                    job_id, _ = await _submit(clients[index], s.headers_for(index), load)
                    if job_id is None:
                        slots[index].release()
                        await asyncio.sleep(0.1)
                    else:
                        submitted.append(job_id)
                        unfinished[job_id] = slots[index]

            async def settled() -> None:
                """A job completes when the coordinator has recorded it finished (and settled its money),
                not when the Island sent its last message."""
                while time.monotonic() < stop_at:
                    await asyncio.sleep(0.05)
                    if not unfinished:
                        continue
                    rows = await (
                        await conn.execute(
                            "SELECT id::text, state FROM jobs WHERE id = ANY(%s::uuid[]) AND state = ANY(%s)",
                            (list(unfinished), list(TERMINAL)),
                        )
                    ).fetchall()
                    for job_id, state in rows:
                        unfinished.pop(job_id).release()
                        if state == "succeeded":
                            load.complete()
                        else:
                            load.refuse(f"job_{state}")

            await asyncio.gather(settled(), *[submitter(i) for i in range(submitters)])
            load.end()
            by_process = machine.ms_per_job(machine_before, load.totals["completed"])
        drain = time.monotonic() + 60
        while time.monotonic() < drain and _db_checks(s.database_url, submitted)["lost"] > 0:
            await asyncio.sleep(0.5)
        checks = _db_checks(s.database_url, submitted)
        phases: dict[str, Any] = {**_phase_p50_ms(s.database_url, submitted)}
        if failures := _failure_reasons(s.database_url, submitted):
            phases["failure_reasons"] = failures
        await fleet.stop()
        fleet_failures(fleet, load)
    completed = load.per_second()["completed"][: int(load.window)]  # full seconds only
    sustained = float(statistics.median(completed)) if completed else 0.0
    return Result(
        "lifecycle",
        {
            "seconds": duration,
            "submitters": submitters,
            "accounts": submitters,
            "credits_per_account": int(BENCH_CREDITS),
            "jobs_in_flight_per_submitter": window,
            "islands": 8,
            "island_slots": 8 * 256,
            "tokens": 20,
        },
        {
            "median_completed_per_s": sustained,
            "mean_completed_per_s": round(load.totals["completed"] / max(load.window, 1e-9), 1),
            "coordinator_cpu_ms_per_job": by_process["coordinator"],
            "cpu_ms_per_job_by_process": by_process,
            **checks,
            **phases,
        },
        target="≥ 300 jobs/s sustained, zero lost, zero double-charged",
        primary="median_completed_per_s",
        met=sustained >= 300 and checks["lost"] == 0 and checks["double_charged"] == 0,
        notes="Completed = recorded finished and settled by the coordinator (the database), counted per "
        "second of the load; each submitter keeps at most "
        f"{window} jobs unfinished, on its own account. `cpu_ms_per_job_by_process`: what each process "
        "on the machine's cores spent per completed job (the load generator is the bench itself: its "
        "HTTP clients and simulated Islands).",
    ).with_load(load)


@scenario("hot_account", "one account, 32 concurrent submitters")
async def hot_account(env: BenchEnv) -> Result:
    per_submitter = 8 if env.quick else 60
    async with stack(env, "s_hot") as s:
        load = Load(progress="accepted")
        fleet = FakeFleet(
            env.nats_url,
            8,
            max_concurrent=512,
            behaviour=JobBehaviour(tokens=1),
            on_assigned=lambda job, t: load.assign(),
        )
        await start_fleet(s, fleet)
        latencies: list[float] = []
        failures = 0
        async with http_clients(s, 32) as clients:

            async def submitter(client: httpx.AsyncClient) -> None:
                nonlocal failures
                for _ in range(per_submitter):
                    job_id, elapsed = await _submit(client, s.headers, load)
                    latencies.append(elapsed)
                    failures += job_id is None

            watch = Stopwatch()
            load.begin()
            await asyncio.gather(*[submitter(client) for client in clients])
            load.end()
            elapsed = watch.elapsed
        await fleet.stop()
        fleet_failures(fleet, load)
    summary = latency_summary(latencies)
    rate = len(latencies) / elapsed
    raw = env.baselines["baseline_debit"].metrics["hot_debits_per_s"]
    return Result(
        "hot_account",
        {"submitters": 32, "per_submitter": per_submitter},
        {
            "submits_per_s": round(rate, 1),
            **summary,
            "failed": failures,
            "ratio_to_raw_hot_debit": round(rate / raw, 3),
        },
        {"submit latency (ms)": [x * 1000 for x in latencies]},
        target="≥ 1,000 submits/s, p99 ≤ 100 ms, ≥ 57% of the raw hot-row debit",
        primary="submits_per_s",
        met=failures == 0 and rate >= 1000 and summary["p99_ms"] <= 100 and rate >= 0.57 * raw,
    ).with_load(load)


@scenario("sse_streaming", "token streaming to SSE clients (100 and 1,000), and RSS per 1,000 streams")
async def sse_streaming(env: BenchEnv) -> Result:
    metrics: dict[str, float] = {}
    # (label, clients, jobs, tokens, seconds between tokens): two bursts for throughput, then tokens paced
    # like a fast model (100/s) for the latency a token gains between the Island and its readers.
    fanouts = (
        ("c100", 100, 1, 200 if env.quick else 1000, 0.0),
        ("c1000", 1000, 10, 20 if env.quick else 100, 0.0),
        ("paced_c100", 100, 1, 50 if env.quick else 300, 0.01),
    )
    loads: list[tuple[str, Load]] = []
    for label, clients, jobs, tokens, pace in fanouts:
        async with stack(env, f"s_sse_{label}") as s:
            behaviour = JobBehaviour(hold=True, timestamp_tokens=True)
            fleet = FakeFleet(env.nats_url, 2, max_concurrent=64, behaviour=behaviour)
            await start_fleet(s, fleet)
            submits, events = Load(progress="accepted"), Load(progress="completed")
            loads += [(f"{label}_submit", submits), (f"{label}_events", events)]
            async with http_client(s) as client:
                submits.begin()
                job_ids = [
                    j for j in [(await _submit(client, s.headers, submits))[0] for _ in range(jobs)] if j
                ]
                submits.end()
            if not job_ids:
                raise RuntimeError("no job was accepted; see bench.submit_refused")
            while len(fleet.held) < len(job_ids):
                await asyncio.sleep(0.05)
            rss_before = s.coordinator.rss_mb()

            async def release(
                n: int, fleet: FakeFleet = fleet, job_ids: list[str] = job_ids, pace: float = pace
            ) -> None:
                await asyncio.gather(
                    *[fleet.run_job(fleet.held[j], j, tokens=n, yield_every=50, pace=pace) for j in job_ids]
                )

            result = await run_sse_fanout(
                "127.0.0.1",
                s.coordinator.port,
                [f"/api/v1/jobs/{j}/stream" for j in job_ids],
                clients,
                tokens,
                release,
                headers={"Authorization": f"Bearer {s.key}"},
                only=b'"token"',
                sample_every=1 if pace else None,
                load=events,
            )
            if clients == 1000:
                metrics["rss_mb_per_1000_streams"] = round(s.coordinator.rss_mb() - rss_before, 1)
            await fleet.stop()
            fleet_failures(fleet, events)
        for key, value in result.items():
            metrics[f"{label}_{key}"] = value
    base = env.baselines["baseline_sse"].metrics
    metrics["ratio_c100_to_bare"] = round(metrics["c100_events_per_s"] / base["c100_events_per_s"], 3)
    metrics["ratio_c1000_to_bare"] = round(metrics["c1000_events_per_s"] / base["c1000_events_per_s"], 3)
    metrics["bare_paced_c100_latency_p99_ms"] = base["paced_c100_latency_p99_ms"]  # same clients, pace
    return Result(
        "sse_streaming",
        {"fanouts": [f[:4] for f in fanouts], "pace_s": 0.01},
        metrics,
        target="≥ 50,000 ev/s to 100 clients, ≥ 10,000 ev/s to 1,000 clients, Island→client p99 ≤ 3 ms",
        primary="paced_c100_latency_p99_ms",
        met=metrics["c100_events_per_s"] >= 50_000
        and metrics["c1000_events_per_s"] >= 10_000
        and metrics["paced_c100_latency_p99_ms"] <= 3,
        notes="Latency runs from the simulated Island's clock to the reader's (one machine, one clock). "
        "`paced_` is tokens at 100/s, the added latency of the target (`bare_paced_`: the same clients and "
        "pace on `baseline_sse`'s bare server); the burst runs' latencies include the queueing of the whole "
        "burst.",
    ).with_load(*loads)


@scenario("heartbeats", "heartbeat ingestion at 1,000 beats/s; CPU and RSS per 1,000 Islands")
async def heartbeats(env: BenchEnv) -> Result:
    # 10,000 Islands beating every 10 s are 1,000 heartbeats/s; --quick sends the same rate from 1,000
    # Islands beating every second (the CPU per beat is the same, the fleet is smaller).
    islands, interval = (1000, 1.0) if env.quick else (10000, 10.0)
    duration = 10.0 if env.quick else 40.0
    async with stack(env, "s_heartbeats") as s:
        fleet = FakeFleet(env.nats_url, islands, consume=False, heartbeat_every=None)
        rss_before = s.coordinator.rss_mb()
        await fleet.start()
        # Measure steady-state beats only: wait until every registration has been stored.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _host_count(s.database_url) < islands:
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        cpu_before, wall = s.coordinator.cpu_seconds(), time.perf_counter()
        await asyncio.sleep(3)
        idle_share = (s.coordinator.cpu_seconds() - cpu_before) / (time.perf_counter() - wall)
        load = Load(progress="completed")
        cpu_before, wall = s.coordinator.cpu_seconds(), time.perf_counter()
        load.begin()
        async with http_client(s) as client:
            ingested = asyncio.create_task(_count_ingested(client, load))
            sent = await heartbeat_flood(
                env.nats_url, fleet.host_ids, duration, interval, on_sent=load.offer, on_failed=_failed(load)
            )
            load.end()
            ingested.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ingested
        cpu = s.coordinator.cpu_seconds() - cpu_before
        wall = time.perf_counter() - wall
        rss_after = s.coordinator.rss_mb()
        await fleet.stop()
    core_share = cpu / wall
    per_1000_hbs = core_share / (sent / wall / 1000)
    return Result(
        "heartbeats",
        {"islands": islands, "interval_s": interval, "seconds": duration},
        {
            "heartbeats_per_s": round(sent / wall, 1),
            "cpu_share_of_one_core": round(core_share, 4),
            "idle_cpu_share": round(idle_share, 4),
            "cpu_share_per_1000_heartbeats_per_s": round(per_1000_hbs, 4),
            "largest_fleet_per_replica_at_one_core": int(10_000 / max(per_1000_hbs, 1e-9)),
            "rss_mb_per_1000_islands": round((rss_after - rss_before) / islands * 1000, 2),
        },
        target="10,000 Islands at 10 s (1,000 heartbeats/s) using ≤ 25% of one core",
        primary="cpu_share_per_1000_heartbeats_per_s",
        met=per_1000_hbs <= 0.25,
        notes="With --quick each Island beats every second, and beats of one Island within a flush interval "
        "become one database write: the quick figure is a lower bound, the full run (10,000 Islands) the "
        "measure of the target. Completed = heartbeats the coordinator counted as ingested "
        "(`coordinator_heartbeats_total`), sampled every second.",
    ).with_load(load)


def _failed(load: Load) -> Callable[[int], None]:
    return lambda n: load.refuse("publish_failed", n)


async def _count_ingested(client: httpx.AsyncClient, load: Load) -> None:
    """Heartbeats the coordinator ingested, from its own counter, four times a second (a sample a second
    would leave seconds without one whenever a scrape is slow)."""
    seen: float | None = None
    while True:
        try:
            text = (await client.get("/metrics")).text
        except httpx.HTTPError:
            load.refuse("metrics_unanswered")
            text = ""
        total = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("coordinator_heartbeats_total")
        )
        if seen is not None and total >= seen:
            load.complete(int(total - seen))
        seen = total
        await asyncio.sleep(0.25)
