"""What one job costs the database and the coordinator: PostgreSQL's own statement log over serial
20-token jobs (statements and transactions per completed job, and which statements), and the
coordinator's CPU time per job.

The log is switched on for the measured jobs only (`log_statement = all`, with the application name and
backend pid in each line's prefix); the benchmark's own connection names itself and is left out."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

from coordinator.benchmarks.fake_island import FakeFleet, JobBehaviour
from coordinator.benchmarks.harness import BenchEnv, Load, Result, scenario
from coordinator.benchmarks.stack import _submit, http_client, stack, start_fleet
from coordinator.config import libpq_url

BENCH_APP = "coordinator-bench"
PREFIX = "stmt|%a|%p|"
# `stmt|<application>|<pid>|<time…> LOG:  statement: BEGIN` or `… LOG:  execute <name>: SELECT …`
LINE = re.compile(r"^stmt\|(?P<app>[^|]*)\|(?P<pid>\d+)\|.*?LOG:  (?:statement|execute [^:]*): (?P<sql>.*)$")
TERMINAL = ("succeeded", "failed", "cancelled", "timeout")


def count_log(lines: list[str]) -> tuple[int, int, Counter[str]]:
    """Statements, transactions and statement shapes of every backend but the benchmark's own.
    A transaction is a BEGIN … COMMIT/ROLLBACK, or one statement outside of one (autocommit)."""
    statements, transactions = 0, 0
    shapes: Counter[str] = Counter()
    open_tx: set[str] = set()
    for pid, sql in _statements(lines):
        statements += 1
        shapes[shape(sql)] += 1
        word = sql.split(None, 1)[0].upper() if sql else ""
        if word in ("BEGIN", "START"):
            open_tx.add(pid)
            transactions += 1
        elif word in ("COMMIT", "ROLLBACK", "END"):
            open_tx.discard(pid)
        elif pid not in open_tx:
            transactions += 1
    return statements, transactions, shapes


def _statements(lines: list[str]) -> list[tuple[str, str]]:
    """(backend pid, whole statement text) of each logged statement but the benchmark's own; a
    statement's further lines are the log lines that carry no prefix."""
    found: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    for line in lines:
        match = LINE.match(line)
        if match is None:
            if current is not None and not line.startswith("stmt|"):
                current.append(line)
            else:
                current = None
        elif match["app"] == BENCH_APP:
            current = None
        else:
            current = [match["sql"]]
            found.append((match["pid"], current))
    return [(pid, " ".join(parts).strip()) for pid, parts in found]


def read_from(path: Path, offset: int) -> list[str]:
    with path.open(errors="replace") as f:
        f.seek(offset)
        return f.read().splitlines()


def shape(sql: str) -> str:
    """A statement's first words, enough to tell statements apart in the report."""
    words = re.sub(r"\s+", " ", sql).strip()
    return words[:72]


async def _wait_settled(conn: psycopg.AsyncConnection[Any], job_id: str, within: float = 30.0) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        row = await (await conn.execute("SELECT state FROM jobs WHERE id = %s::uuid", (job_id,))).fetchone()
        if row is not None and row[0] in TERMINAL:
            return str(row[0])
        await asyncio.sleep(0.02)
    return "lost"


async def _set_logging(conn: psycopg.AsyncConnection[Any], on: bool) -> None:
    if on:
        await conn.execute("ALTER SYSTEM SET log_statement = 'all'")
        await conn.execute(f"ALTER SYSTEM SET log_line_prefix = '{PREFIX}'")
    else:
        await conn.execute("ALTER SYSTEM RESET log_statement")
        await conn.execute("ALTER SYSTEM RESET log_line_prefix")
    await conn.execute("SELECT pg_reload_conf()")
    await asyncio.sleep(0.3)  # every backend applies the reload at its next command


@scenario("statements", "statements and transactions per completed 20-token job; coordinator CPU per job")
async def statements(env: BenchEnv) -> Result:
    jobs = 10 if env.quick else 50
    load = Load(progress="completed")
    log_path = Path(env.postgres.log_path)
    async with stack(env, "s_statements") as s:
        fleet = FakeFleet(
            env.nats_url, 1, behaviour=JobBehaviour(tokens=20), on_assigned=lambda j, t: load.assign()
        )
        await start_fleet(s, fleet)
        conninfo = libpq_url(s.database_url)
        async with (
            http_client(s) as client,
            await psycopg.AsyncConnection.connect(
                conninfo, autocommit=True, application_name=BENCH_APP
            ) as conn,
        ):
            warm, _ = await _submit(client, s.headers)  # caches and prepared statements warm
            if warm is not None:
                await _wait_settled(conn, warm)
            await _set_logging(conn, True)
            start_at, cpu_before = log_path.stat().st_size, s.coordinator.cpu_seconds()
            load.begin()
            try:
                for _ in range(jobs):
                    job_id, _ = await _submit(client, s.headers, load)
                    if job_id is None:
                        continue
                    state = await _wait_settled(conn, job_id)
                    if state == "succeeded":
                        load.complete()
                    else:
                        load.refuse(f"job_{state}")
                await asyncio.sleep(0.5)  # the last job's after-commit work and event flush
                load.end()
                cpu = s.coordinator.cpu_seconds() - cpu_before
            finally:
                await _set_logging(conn, False)
        lines = read_from(log_path, start_at)
        await fleet.stop()
    done = max(load.totals["completed"], 1)
    count, transactions, shapes = count_log(lines)
    per_job = {k: round(v / done, 2) for k, v in shapes.most_common(25)}
    statements_per_job = round(count / done, 1)
    transactions_per_job = round(transactions / done, 1)
    cpu_ms = round(cpu * 1000 / done, 2)
    return Result(
        "statements",
        {"jobs": jobs, "tokens": 20, "islands": 1, "serial": True},
        {
            "statements_per_job": statements_per_job,
            "transactions_per_job": transactions_per_job,
            "coordinator_cpu_ms_per_job": cpu_ms,
            "completed": load.totals["completed"],
            "statements_by_shape_per_job": per_job,
        },
        target="≤ 12 statements in ≤ 4 transactions per job; ≤ 3 ms coordinator CPU per job",
        primary="statements_per_job",
        met=statements_per_job <= 12 and transactions_per_job <= 4 and cpu_ms <= 3,
        notes="PostgreSQL's statement log (log_statement = all) over serial jobs after one warm-up job; "
        "BEGIN and COMMIT count as statements, an autocommit statement as a transaction of its own.",
    ).with_load(load)
