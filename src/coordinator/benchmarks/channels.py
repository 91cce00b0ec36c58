"""Channel scenarios: coordinator memory per idle Phoenix socket, and token fan-out over `job:<id>`
compared with a bare Starlette WebSocket broadcaster measured in the same run (`baseline_ws`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import websockets

from coordinator.benchmarks.fake_island import FakeFleet, JobBehaviour
from coordinator.benchmarks.harness import BenchEnv, Load, Result, Stopwatch, scenario
from coordinator.benchmarks.stack import _submit, http_client, stack, start_fleet
from coordinator.devstack import free_port

CONNECT_CONCURRENCY = 200


async def _connect(url: str) -> Any:
    return await websockets.connect(url, ping_interval=None, max_size=None, open_timeout=60)


async def _fanout(
    urls: list[str],
    join: list[Any] | None,
    tokens: int,
    release: Callable[[], Awaitable[None]],
    load: Load | None = None,
) -> dict[str, float]:
    """Connect one client per URL (sending `join[i]` first, when given), trigger `release`, and time from
    the first token frame (at any client) to the last: the fan-out rate, without the time the producer
    takes to start."""
    sockets = [await _connect(u) for u in urls]
    got = [0] * len(sockets)
    first, last = [float("inf")], [0.0]
    finished = [asyncio.Event() for _ in sockets]
    for i, ws in enumerate(sockets):
        if join is not None:
            await ws.send(json.dumps(join[i]))
            json.loads(await ws.recv())  # the join reply

    async def read(i: int, ws: Any) -> None:
        async for raw in ws:
            if ',"token",' in raw:
                now = time.perf_counter()
                first[0], last[0] = min(first[0], now), now
                got[i] += 1
                if load is not None:
                    load.complete()
                if got[i] >= tokens:
                    finished[i].set()
                    return

    readers = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(sockets)]
    if load is not None:
        load.begin()
        load.offer(tokens * len(sockets))
    await release()
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in finished)), 300)
    if load is not None:
        load.end()
    elapsed = max(last[0] - first[0], 1e-6)
    for task in readers:
        task.cancel()
    for ws in sockets:
        with contextlib.suppress(Exception):
            await ws.close()
    return {"events_per_s": round(sum(got) / elapsed, 1), "delivered": float(sum(got))}


def _sizes(env: BenchEnv) -> tuple[int, int, int]:
    """(idle sockets, fan-out clients, tokens per client)."""
    return (1_000, 50, 200) if env.quick else (10_000, 100, 1_000)


@scenario("baseline_ws", "raw WebSocket fan-out of a bare Starlette broadcaster", baseline=True)
async def baseline_ws(env: BenchEnv) -> Result:
    _, clients, tokens = _sizes(env)
    port = free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - a short-lived server for the baseline
        [sys.executable, "-m", "coordinator.benchmarks.ws_server", str(port)]
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(100):
                try:
                    await client.get("/count")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)

            async def release() -> None:
                await client.post("/publish", params={"n": tokens}, timeout=120)

            result = await _fanout([f"ws://127.0.0.1:{port}/ws"] * clients, None, tokens, release)
    finally:
        proc.terminate()
        proc.wait(10)
    metrics = {f"c{clients}_{k}": v for k, v in result.items()}
    return Result("baseline_ws", {"clients": clients, "tokens": tokens}, metrics)


async def _idle_sockets(url: str, count: int, load: Load | None = None) -> list[Any]:
    """`count` sockets, each answered once (a heartbeat round trip), then left idle."""
    sockets: list[Any] = []
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(i: int) -> None:
        async with gate:
            if load is not None:
                load.offer()
            ws = await _connect(url)
            await ws.send(json.dumps([None, str(i), "phoenix", "heartbeat", {}]))
            await ws.recv()
            sockets.append(ws)
            if load is not None:
                load.complete()

    if load is not None:
        load.begin()
    await asyncio.gather(*(one(i) for i in range(count)))
    if load is not None:
        load.end()
    return sockets


@scenario(
    "channels",
    "Phoenix sockets: coordinator RSS per idle socket; job:<id> token fan-out vs a bare WebSocket server",
)
async def channels(env: BenchEnv) -> Result:
    idle, clients, tokens = _sizes(env)
    metrics: dict[str, float] = {}
    async with stack(env, "s_channels") as s:
        base = s.coordinator.url.replace("http://", "ws://")
        url = f"{base}/socket/websocket?vsn=2.0.0&token={s.key}"
        # Idle sockets: RSS growth of the coordinator process per connected, served socket — after a
        # warm-up round (first-use code paths, the database pool growing under concurrent connects).
        warm = await _idle_sockets(url, min(idle, 500))
        await asyncio.gather(*(ws.close() for ws in warm), return_exceptions=True)
        await asyncio.sleep(1.0)
        rss_before = s.coordinator.rss_mb()
        watch = Stopwatch()
        connects = Load()  # a socket offered, completed once its heartbeat was answered
        sockets = await _idle_sockets(url, idle, connects)
        metrics["idle_connect_seconds"] = round(watch.elapsed, 2)
        await asyncio.sleep(1.0)  # let the allocator settle before reading RSS
        rss_after = s.coordinator.rss_mb()
        metrics["idle_sockets"] = float(len(sockets))
        metrics["rss_mb_idle_delta"] = round(rss_after - rss_before, 1)
        metrics["rss_kb_per_idle_socket"] = round((rss_after - rss_before) * 1024 / max(1, len(sockets)), 2)
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)

        # Fan-out: `clients` sockets joined to one job, the Island releases `tokens` tokens at once.
        fleet = FakeFleet(env.nats_url, 1, max_concurrent=8, behaviour=JobBehaviour(hold=True))
        await start_fleet(s, fleet)
        async with http_client(s) as client:
            job_id, _ = await _submit(client, s.headers)
        if job_id is None:
            raise RuntimeError("no job was accepted; see bench.submit_refused")
        while job_id not in fleet.held:
            await asyncio.sleep(0.05)
        topic = f"job:{job_id}"
        joins = [[str(i), str(i), topic, "phx_join", {}] for i in range(clients)]

        async def release() -> None:
            await fleet.run_job(fleet.held[job_id], job_id, tokens=tokens, yield_every=50, pace=0.0)

        fanout = Load()  # every token × joined socket offered at the release, completed on arrival
        result = await _fanout([url] * clients, joins, tokens, release, fanout)
        await fleet.stop()
    for key, value in result.items():
        metrics[f"c{clients}_{key}"] = value
    bare = env.baselines.get("baseline_ws")
    ratio = None
    if bare is not None:
        ratio = round(metrics[f"c{clients}_events_per_s"] / bare.metrics[f"c{clients}_events_per_s"], 3)
        metrics["ratio_fanout_to_bare"] = ratio
    per_socket = metrics["rss_kb_per_idle_socket"]
    return Result(
        "channels",
        {"idle_sockets": idle, "fanout_clients": clients, "tokens": tokens},
        metrics,
        target="≤ 30 KB coordinator RSS per idle socket; job-channel fan-out ≥ 0.8× a bare WebSocket server",
        primary="rss_kb_per_idle_socket",
        met=per_socket <= 30 and (ratio is None or ratio >= 0.8),
        notes="Idle sockets are authenticated (API key) and answered once (a heartbeat), then left idle. "
        "The fan-out clients and the bare broadcaster's clients are the same code (websockets, one "
        "process); a token is counted when its frame arrives.",
    ).with_load(("idle_sockets", connects), ("fanout", fanout))
