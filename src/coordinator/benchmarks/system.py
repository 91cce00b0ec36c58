"""A coordinator under test: `coordinator serve` in its own process (so its CPU and RSS are its own)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import psutil

from coordinator.accounts import service as accounts
from coordinator.app import build_runtime
from coordinator.config import Settings
from coordinator.devstack import free_port
from coordinator.workloads.service import seed_default_cargos

SECRET = "bench-secret"


@dataclass
class CoordinatorProcess:
    database_url: str
    nats_url: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    ps: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, **env_overrides: str) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "NATS_URL": self.nats_url,
            "COORDINATOR_ENV": "test",
            "COORDINATOR_SECRET_KEY": SECRET,
            "COORDINATOR_PORT": str(self.port),
            "COORDINATOR_LOG_LEVEL": "WARNING",
            "COORDINATOR_RATE_LIMIT_PER_MINUTE": "100000000",
            "COORDINATOR_POLL_RATE_LIMIT_PER_MINUTE": "100000000",
            # The load generator is one account: lift its active-job and daily-spend quotas.
            "COORDINATOR_ACTIVE_JOBS_UNVERIFIED": "100000000",
            "COORDINATOR_ACTIVE_JOBS_VERIFIED": "100000000",
            "COORDINATOR_DAILY_SPEND_UNVERIFIED": "1000000000000",
            **env_overrides,
        }
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - started once per scenario
            [sys.executable, "-m", "coordinator.cli", "serve"], env=env, stderr=subprocess.DEVNULL
        )
        self.ps = psutil.Process(self.proc.pid)
        async with httpx.AsyncClient(base_url=self.url) as client:
            for _ in range(300):
                if self.proc.poll() is not None:
                    raise RuntimeError("coordinator exited during start-up")
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError("coordinator did not become ready")

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss_mb(self) -> float:
        return float(self.ps.memory_info().rss) / 2**20

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live children (PostgreSQL's backends), in seconds."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in (root, *root.children(recursive=True)):
        with contextlib.suppress(psutil.Error):  # a backend that ended meanwhile
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def own_cpu_seconds() -> float:
    """CPU time of this process (every thread), in seconds."""
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


@dataclass
class MachineCpu:
    """CPU seconds of each process a scenario runs on the machine's cores: the coordinator, PostgreSQL,
    NATS and this process (the load generator: clients and simulated Islands); `ms_per_job` since a
    `snapshot` is each one's share of the work."""

    coordinator: CoordinatorProcess
    postgres_pid: int
    nats_pid: int

    def snapshot(self) -> dict[str, float]:
        return {
            "coordinator": self.coordinator.cpu_seconds(),
            "postgresql": tree_cpu_seconds(self.postgres_pid),
            "nats": tree_cpu_seconds(self.nats_pid),
            "load_generator": own_cpu_seconds(),  # (its children are the servers above)
        }

    def ms_per_job(self, before: dict[str, float], jobs: int) -> dict[str, float]:
        """Each process's CPU milliseconds per job since `before`."""
        now = self.snapshot()
        return {name: round((now[name] - before[name]) * 1000 / max(jobs, 1), 2) for name in now}


# A bench account's balance: a job costs at most a few credits (the seeded Cargos' prices times the surge
# multiplier), so even 1,000 jobs/s from one account for an hour would not spend a thousandth of it.
BENCH_CREDITS = Decimal(10**9)


async def make_account(database_url: str, email: str, credits: Decimal = BENCH_CREDITS) -> str:
    """Seed the Cargos and a rich consumer; returns its API key."""
    return (await make_accounts(database_url, [email], credits))[0]


async def make_accounts(database_url: str, emails: list[str], credits: Decimal = BENCH_CREDITS) -> list[str]:
    """Seed the Cargos and one rich consumer per email; returns their API keys, in order."""
    runtime = build_runtime(Settings(env="test", secret_key=SECRET, database_url=database_url, nats_url=None))
    try:
        keys = []
        async with runtime.db.transaction() as session:
            await seed_default_cargos(session)
            for email in emails:
                user = await accounts.get_or_create_user(session, email, credits=credits)
                _, key = await accounts.create_api_key(session, SECRET, user, "bench")
                keys.append(key)
        return keys
    finally:
        await runtime.db.dispose()
