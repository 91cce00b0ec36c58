"""SSE fan-out benchmark: events/s delivered to N stream clients and producer→client latency p50/p99.

One coordinator (embedded PostgreSQL, pub/sub, output accumulator, HTTP) runs in this process; the N
clients run in a separate process (one event loop, N HTTP connections, parsed like the js SDK). The
producer feeds tokens to the accumulator (the path Island output takes after the NATS handler); each
token carries its production time, so latency = receive time − production time (one machine clock).

    .venv/bin/python bench/sse_fanout.py --clients 100 1000 --tokens 200 --rate 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx


async def run_clients(url: str, key: str, n: int) -> dict[str, Any]:
    """N concurrent streams; per event the latency, per stream the count."""
    latencies: list[float] = []
    counts: list[int] = []
    first_rx, last_rx = float("inf"), 0.0
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal first_rx, last_rx
        count, buffer = 0, ""
        async with client.stream("GET", url, headers=headers) as response:
            async for text in response.aiter_text():
                now = time.time()
                buffer += text
                *blocks, buffer = buffer.split("\n\n")
                for block in blocks:
                    if not block.startswith("data: "):
                        continue
                    event = json.loads(block[6:])
                    if event.get("type") == "token":
                        latencies.append(now - float(event["content"]))
                        count += 1
                        first_rx, last_rx = min(first_rx, now), max(last_rx, now)
        counts.append(count)

    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        tasks = []
        for i in range(n):  # ramp up in waves of 50, as real clients do not all arrive in one millisecond
            tasks.append(asyncio.create_task(one(client)))
            if i % 50 == 49:
                await asyncio.sleep(0.2)
        await asyncio.gather(*tasks)
    return {"latencies": latencies, "counts": counts, "first_rx": first_rx, "last_rx": last_rx}


def client_main(args: argparse.Namespace) -> None:
    result = asyncio.run(run_clients(args.url, args.key, args.n))
    sys.stdout.write(json.dumps(result))


async def scenario(stack: Any, n_clients: int, tokens: int, rate: float) -> dict[str, Any]:
    from tests.stream_support import finish, running_job

    from coordinator.pubsub import job_topic

    ref = await running_job(stack)
    url = f"{stack.runtime.base_url}/api/v1/jobs/{ref.job_id}/stream"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--client",
        "--url",
        url,
        "--key",
        stack.consumer.key,
        "--n",
        str(n_clients),
        stdout=subprocess.PIPE,
    )
    hub = stack.runtime.pubsub
    deadline = time.monotonic() + 120
    while hub.subscribers(job_topic(ref.job_id)) < n_clients:
        assert time.monotonic() < deadline, "clients did not connect"
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    checked_out = stack.runtime.db.engine.pool.checkedout()  # idle streams must hold no connection
    start = time.time()
    interval = 1.0 / rate if rate > 0 else 0.0
    for seq in range(1, tokens + 1):
        await stack.accumulator.on_output(ref, seq, repr(time.time()), False)
        if interval:
            await asyncio.sleep(max(0.0, start + seq * interval - time.time()))
    await stack.accumulator.on_output(ref, tokens + 1, "", True)
    await finish(stack, ref)
    out, _ = await proc.communicate()
    result = json.loads(out)
    lat = sorted(result["latencies"])
    delivered = len(lat)
    span = max(1e-9, result["last_rx"] - start)
    return {
        "clients": n_clients,
        "db_connections_held_by_idle_streams": checked_out,
        "tokens": tokens,
        "rate_per_s": rate or "max",
        "delivered": delivered,
        "complete": all(c == tokens for c in result["counts"]) and len(result["counts"]) == n_clients,
        "events_per_s": round(delivered / span),
        "p50_ms": round(statistics.median(lat) * 1000, 2),
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 2),
    }


async def main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.stream_support import stream_stack

    from coordinator.devstack import EmbeddedPostgres
    from coordinator.repo.migrate import upgrade

    with tempfile.TemporaryDirectory(prefix="bench-sse-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg")
        pg.start()
        url = pg.ensure_database(f"bench_{uuid.uuid4().hex[:8]}")
        upgrade(url)
        try:
            async with stream_stack(
                url, sse_keepalive_seconds=15.0, log_level="WARNING", db_pool_size=40
            ) as stack:
                rows = []
                for n in args.clients:
                    for rate in (args.rate, 0.0):
                        rows.append(await scenario(stack, n, args.tokens, rate))
                        print(json.dumps(rows[-1]), flush=True)
        finally:
            pg.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rate", type=float, default=100.0, help="tokens per second (paced run)")
    parsed = parser.parse_args()
    if parsed.client:
        client_main(parsed)
    else:
        asyncio.run(main(parsed))
