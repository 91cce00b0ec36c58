"""Time to first token: HTTP submit → the first `token` frame of the job's SSE stream at the client, on an
idle fleet. The client does what an SDK does: submit, then open `GET /api/v1/jobs/{id}/stream` and read
until the first token (replayed or live)."""

from __future__ import annotations

import time

import httpx

from coordinator.benchmarks.fake_island import FakeFleet, JobBehaviour
from coordinator.benchmarks.harness import BenchEnv, Load, Result, latency_summary, scenario
from coordinator.benchmarks.stack import _submit, fleet_failures, http_client, stack, start_fleet

WITHIN_SECONDS = 10.0


async def first_token(client: httpx.AsyncClient, headers: dict[str, str], job_id: str) -> bool:
    """Read the job's stream until its first token frame; False when none came in time."""
    path = f"/api/v1/jobs/{job_id}/stream"
    async with client.stream("GET", path, headers=headers, timeout=WITHIN_SECONDS) as response:
        if response.status_code != 200:
            return False
        async for line in response.aiter_lines():
            if line.startswith("data:") and '"token"' in line:
                return True
    return False


@scenario(
    "time_to_first_token", "submit → first token frame of the job's SSE stream at the client, idle fleet"
)
async def time_to_first_token(env: BenchEnv) -> Result:
    count = 30 if env.quick else 300
    load = Load(progress="completed")
    latencies: list[float] = []
    async with stack(env, "s_first_token") as s:
        fleet = FakeFleet(
            env.nats_url, 4, behaviour=JobBehaviour(tokens=20), on_assigned=lambda j, t: load.assign()
        )
        await start_fleet(s, fleet)
        async with http_client(s) as client:
            load.begin()
            for _ in range(count):
                started = time.perf_counter()
                job_id, _ = await _submit(client, s.headers, load)
                if job_id is None:
                    continue
                try:
                    got = await first_token(client, s.headers, job_id)
                except httpx.HTTPError:
                    got = False
                if got:
                    latencies.append(time.perf_counter() - started)
                    load.complete()
                else:
                    load.refuse("no_first_token")
            load.end()
        await fleet.stop()
        fleet_failures(fleet, load)
    summary = latency_summary(latencies)
    return Result(
        "time_to_first_token",
        {"jobs": count, "islands": 4, "tokens": 20},
        {**summary, "streamed": len(latencies)},
        {"submit→first token (ms)": [x * 1000 for x in latencies]},
        target="p50 ≤ 10 ms",
        primary="p50_ms",
        met=len(latencies) == count and summary["p50_ms"] <= 10,
        notes="Serial: each job is submitted, then its stream opened and read until the first token frame "
        "(replayed from the store or the accumulator when it came before the stream was open).",
    ).with_load(load)
