"""Hot-account benchmark: the submit transaction (job insert + guarded debit + ledger row) under 32
concurrent submitters, against embedded PostgreSQL.

Scenarios:
  many_accounts   each submitter charges its own account (the baseline)
  charge_first    one account; debit, then the job insert, then commit (the row lock spans 2 round trips)
  charge_last     one account; job insert, then the debit just before commit (the lock spans 1 round trip)
  sharded_8       one account whose balance is split over 8 shard rows; the debit picks a random shard
                  with enough credit (prototype table created by this script only)

Usage: .venv/bin/python bench/hot_account.py [--seconds 4] [--workers 32]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.billing import ledger
from coordinator.config import normalize_database_url
from coordinator.devstack import EmbeddedPostgres
from coordinator.repo.database import Database
from coordinator.repo.migrate import upgrade

SHARDS = 8
INSERT_JOB = text(
    'INSERT INTO jobs (id, user_id, workload_id, input, budget) VALUES (:id, :u, :w, \'{"prompt": "hi"}\', 1)'
)
SHARD_DEBIT = text(
    """
    WITH upd AS (
        UPDATE user_balance_shards SET credits = credits - :amount
        WHERE user_id = :user_id AND shard = :shard AND credits >= :amount
        RETURNING credits
    )
    INSERT INTO transactions (user_id, type, amount, balance_after, job_id, idempotency_key)
    SELECT :user_id, 'charge', -:amount, credits, :job_id, :key FROM upd
    RETURNING balance_after
    """
)

Submit = Callable[[AsyncSession, int, int, uuid.UUID], Awaitable[bool]]


async def charge_first(session: AsyncSession, user_id: int, workload_id: int, job_id: uuid.UUID) -> bool:
    ok = await ledger.debit(session, user_id, Decimal(1), job_id=None, idempotency_key=f"charge:{job_id}")
    await session.execute(INSERT_JOB, {"id": job_id, "u": user_id, "w": workload_id})
    return ok is not None


async def charge_last(session: AsyncSession, user_id: int, workload_id: int, job_id: uuid.UUID) -> bool:
    await session.execute(INSERT_JOB, {"id": job_id, "u": user_id, "w": workload_id})
    ok = await ledger.debit(session, user_id, Decimal(1), job_id=job_id, idempotency_key=f"charge:{job_id}")
    return ok is not None


async def sharded(session: AsyncSession, user_id: int, workload_id: int, job_id: uuid.UUID) -> bool:
    await session.execute(INSERT_JOB, {"id": job_id, "u": user_id, "w": workload_id})
    order = random.sample(range(SHARDS), SHARDS)
    for shard in order:
        params = {"amount": Decimal(1), "user_id": user_id, "shard": shard, "job_id": job_id}
        row = (await session.execute(SHARD_DEBIT, {**params, "key": f"charge:{job_id}"})).first()
        if row is not None:
            return True
    return False


async def run(
    db: Database, submit: Submit, users: list[int], workload_id: int, seconds: float, workers: int
) -> dict[str, float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        user_id = users[n % len(users)]
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with db.transaction() as session:
                assert await submit(session, user_id, workload_id, uuid.uuid4())
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*[worker(n) for n in range(workers)])
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "charges_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "n": len(latencies),
    }


async def setup(db: Database, workers: int) -> tuple[list[int], int]:
    async with db.transaction() as session:
        await session.execute(
            text(
                "CREATE TABLE IF NOT EXISTS user_balance_shards (user_id int, shard int, "
                "credits numeric(20,6), PRIMARY KEY (user_id, shard))"
            )
        )
        workload_id = (
            await session.execute(
                text("INSERT INTO workloads (slug, name) VALUES ('bench', 'bench') RETURNING id")
            )
        ).scalar_one()
        users = []
        for i in range(workers):
            uid = (
                await session.execute(
                    text("INSERT INTO users (email, credits) VALUES (:e, 0) RETURNING id"),
                    {"e": f"u{i}@bench"},
                )
            ).scalar_one()
            await ledger.grant(session, uid, Decimal(10_000_000), "bench")
            users.append(uid)
        await session.execute(
            text("INSERT INTO user_balance_shards SELECT :u, s, 1000000 FROM generate_series(0, :n - 1) s"),
            {"u": users[0], "n": SHARDS},
        )
    return users, workload_id


async def main(seconds: float, workers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="hot-account-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg")
        pg.start()
        try:
            url = normalize_database_url(pg.ensure_database("bench"))
            upgrade(url)
            db = Database(url, pool_size=workers, max_overflow=0)
            users, workload_id = await setup(db, workers)
            scenarios: list[tuple[str, Submit, list[int]]] = [
                ("many_accounts", charge_last, users),
                ("charge_first", charge_first, users[:1]),
                ("charge_last", charge_last, users[:1]),
                ("sharded_8", sharded, users[:1]),
            ]
            print(f"{workers} concurrent submitters, {seconds:.0f} s per scenario")
            for name, submit, who in scenarios:
                await run(db, submit, who, workload_id, 0.5, workers)  # warm-up
                r = await run(db, submit, who, workload_id, seconds, workers)
                print(
                    f"{name:14s} {r['charges_per_s']:8.0f} charges/s  p50 {r['p50_ms']:6.1f} ms  "
                    f"p99 {r['p99_ms']:6.1f} ms  (n={r['n']:.0f})"
                )
            async with db.session() as session:
                # the shard prototype keeps its balance outside users.credits; every other account reconciles
                bad = [u for u in await ledger.unreconciled_users(session) if u[0] != users[0]]
                assert bad == [], bad
            await db.dispose()
        finally:
            pg.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--workers", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.workers))
