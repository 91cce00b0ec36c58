"""Chaos: a broker restart, a database restart and an Island killed, each in the middle of a run of
streamed jobs served by a real `coordinator serve` process; afterwards every job is terminal, none lost,
none charged twice, the ledger reconciles and no job succeeded with less output than its Island sent.
(SIGKILL of the coordinator mid-dispatch is tests/test_jobs_crash.py; the NATS cluster is
tests/test_chaos_cluster.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coordinator.devstack import EmbeddedNats, EmbeddedPostgres
from coordinator.repo.migrate import upgrade
from tests.chaos_support import assert_invariants, chaos_stack, restored, some_running, wait_until

JOBS = 24


async def test_chaos_nats_restart_mid_jobs(database_url: str, tmp_path: Path, monkeypatch: Any) -> None:
    broker = EmbeddedNats(tmp_path / "nats")
    broker.start()
    try:
        async with chaos_stack(database_url, broker.url, tmp_path, monkeypatch) as chaos:
            accepted = await chaos.submit(JOBS)
            assert len(accepted) == JOBS
            await wait_until(lambda: some_running(chaos.runtime))
            with restored(broker.stop, broker.start):  # same port, same JetStream store
                pass
            accepted += await chaos.submit(4)  # and it takes new work after the restart
            await assert_invariants(chaos.runtime, accepted)
    finally:
        broker.stop()


async def test_chaos_postgres_restart_mid_jobs(nats_url: str, tmp_path: Path, monkeypatch: Any) -> None:
    postgres = EmbeddedPostgres(tmp_path / "pg")
    postgres.start()
    try:
        database_url = postgres.ensure_database("chaos")
        await_upgrade(database_url)
        async with chaos_stack(database_url, nats_url, tmp_path, monkeypatch) as chaos:
            accepted = await chaos.submit(JOBS)
            assert len(accepted) == JOBS
            await wait_until(lambda: some_running(chaos.runtime))
            await chaos.runtime.db.dispose()  # the test's own pool, which the restart invalidates
            with restored(postgres.stop, postgres.start):
                pass
            await chaos.healthy()
            accepted += await chaos.submit(4)
            await assert_invariants(chaos.runtime, accepted)
    finally:
        postgres.stop()


async def test_chaos_island_killed_mid_job(
    database_url: str, nats_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    async with chaos_stack(database_url, nats_url, tmp_path, monkeypatch, chunk_delay=0.1) as chaos:
        accepted = await chaos.submit(12)
        victim = chaos.islands[0]

        async def victim_busy() -> bool:
            return victim.active > 0

        await wait_until(victim_busy)
        await victim.stop()  # gone mid-job: no more output, status or heartbeats
        await assert_invariants(chaos.runtime, accepted)


def await_upgrade(database_url: str) -> None:
    upgrade(database_url)
