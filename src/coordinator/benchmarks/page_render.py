"""The web app's render time (issue 14): every main page of a signed-in operator, served by a
`coordinator serve` process whose database holds 10,000 jobs (and their ledger) of that user."""

from __future__ import annotations

import secrets
import time

import httpx
import psycopg

from coordinator.accounts.service import digest
from coordinator.benchmarks.harness import BenchEnv, Load, Result, latency_summary, scenario
from coordinator.benchmarks.system import SECRET, CoordinatorProcess, make_account
from coordinator.config import libpq_url

EMAIL = "pages@bench.local"
JOBS = 10_000

# 10,000 finished or waiting jobs of the user, spread over 30 days, with a charge and (for the failed
# ones) a refund each, so that the job list, the ledger and the charts have real rows to read.
SEED_SQL = """
WITH u AS (SELECT id FROM users WHERE email = %(email)s),
     w AS (SELECT id, slug FROM workloads WHERE slug IN ('llm-chat', 'sdxl', 'text-stats')),
     j AS (
  INSERT INTO jobs (id, user_id, workload_id, state, input, output, budget, charged, refunded,
                    created_at, assigned_at, started_at, completed_at, settled_at, usage)
  SELECT gen_random_uuid(), (SELECT id FROM u),
         (SELECT id FROM w ORDER BY id OFFSET (g %% 3) LIMIT 1),
         (ARRAY['succeeded','succeeded','succeeded','failed','cancelled','queued'])[1 + g %% 6],
         jsonb_build_object('prompt', 'benchmark prompt ' || g),
         'You said: benchmark prompt ' || g, 1, 1, CASE WHEN g %% 6 IN (3, 4) THEN 1 ELSE 0 END,
         t, t + interval '20 ms', t + interval '40 ms', t + interval '2 s', t + interval '2 s',
         jsonb_build_object('completion_tokens', 5)
  FROM generate_series(1, %(jobs)s) AS g,
       LATERAL (SELECT now() - (g * interval '30 days' / %(jobs)s)) AS ts(t)
  RETURNING id, user_id, state, created_at
)
INSERT INTO transactions (user_id, type, amount, job_id, description, created_at)
SELECT user_id, 'charge', -1, id, 'job charge', created_at FROM j
UNION ALL
SELECT user_id, 'refund', 1, id, 'job refund', created_at + interval '2 s' FROM j
WHERE state IN ('failed', 'cancelled')
"""


def seed(database_url: str) -> tuple[str, str]:
    """The jobs and ledger above, an operator role and a session; returns (session token, a job id)."""
    token = secrets.token_urlsafe(32)
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute(SEED_SQL, {"email": EMAIL, "jobs": JOBS})
        conn.execute("UPDATE users SET role = 'admin' WHERE email = %s", (EMAIL,))
        conn.execute(
            "INSERT INTO user_sessions (user_id, token_hash, expires_at) "
            "SELECT id, %s, now() + interval '1 day' FROM users WHERE email = %s",
            (digest(SECRET, token), EMAIL),
        )
        conn.execute("ANALYZE")
        row = conn.execute("SELECT id FROM jobs ORDER BY created_at DESC OFFSET 500 LIMIT 1").fetchone()
    assert row is not None
    return token, str(row[0])


@scenario("page_render", "web pages rendered for a signed-in operator with 10,000 jobs in the table")
async def page_render(env: BenchEnv) -> Result:
    database_url = env.fresh_database("s_pages")
    await make_account(database_url, EMAIL)
    token, job_id = seed(database_url)
    pages = [
        "/chat",
        "/image",
        "/jobs",
        "/jobs?page=300",
        f"/jobs/{job_id}",
        "/credits",
        "/credits?type=refund",
        "/settings/api-keys",
        "/settings/islands",
        "/cargo",
        "/exchange",
        "/admin/fleet",
        "/admin/jobs",
        f"/admin/jobs/{job_id}",
        "/admin/users",
        "/host",
        "/verify",
        "/admin/kyc",
        "/admin/registry",
        "/admin/exchange",
    ]
    rounds = 10 if env.quick else 60
    coordinator = CoordinatorProcess(database_url, env.nats_url)
    await coordinator.start()
    per_page: dict[str, list[float]] = {path: [] for path in pages}
    failures = 0
    load = Load()  # every page load offered, completed when it answered 200
    try:
        cookies = {"coordinator_session": token}
        async with httpx.AsyncClient(base_url=coordinator.url, cookies=cookies, timeout=30) as client:
            for path in pages:  # warm-up: templates compiled, connections opened
                await client.get(path)
            load.begin()
            for _ in range(rounds):
                for path in pages:
                    load.offer()
                    started = time.perf_counter()
                    response = await client.get(path)
                    per_page[path].append(time.perf_counter() - started)
                    failures += response.status_code != 200
                    if response.status_code == 200:
                        load.complete()
                    else:
                        load.refuse(f"http_{response.status_code}")
            load.end()
    finally:
        coordinator.stop()
    everything = [s for series in per_page.values() for s in series]
    summary = latency_summary(everything)
    slowest = max(pages, key=lambda p: latency_summary(per_page[p])["p99_ms"])
    return Result(
        "page_render",
        {"jobs": JOBS, "pages": len(pages), "rounds": rounds},
        {
            **summary,
            "failures": failures,
            "slowest_page": slowest,
            "slowest_p99_ms": latency_summary(per_page[slowest])["p99_ms"],
            "per_page_p99_ms": {p: latency_summary(s)["p99_ms"] for p, s in per_page.items()},
        },
        {"page render (ms)": [s * 1000 for s in everything]},
        target="p99 ≤ 50 ms over every page load (10,000 jobs); the slowest page is reported",
        primary="p99_ms",
        met=failures == 0 and summary["p99_ms"] <= 50,
    ).with_load(load)
