"""`/metrics`: exposition, the PostgreSQL gauges, production auth, HTTP and database instrumentation."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from coordinator.app import HttpChild
from coordinator.runtime import Runtime
from coordinator.supervisor import Supervisor
from coordinator.telemetry import metrics
from coordinator.telemetry.child import TelemetryChild
from coordinator.telemetry.collectors import LedgerTotals, MetricsCollector
from tests.conftest import make_settings
from tests.factories import make_consumer, seed_cargos
from tests.telemetry_support import parse, scrape, value


async def insert_fixtures(runtime: Runtime) -> None:
    await seed_cargos(runtime)
    consumer = await make_consumer(runtime, credits=0)
    uid = consumer.user.id
    async with runtime.db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO hosts (id, status, region, max_concurrent, active_jobs, warm_workload_ids)"
                " VALUES"
                " (:a, 'online', 'eu', 2, 1, '{llm-chat}'), (:b, 'online', 'eu', 3, 0, '{llm-chat,sdxl}'),"
                " (:c, 'offline', 'us', 4, 0, '{}'), (:d, 'online', NULL, 1, 1, '{}')"
            ),
            {"a": uuid.uuid4(), "b": uuid.uuid4(), "c": uuid.uuid4(), "d": uuid.uuid4()},
        )
        jobs = [
            ("queued", "llm-chat", "now() - interval '42 seconds'", "NULL"),
            ("queued", "llm-chat", "now()", "NULL"),
            ("queued", "sdxl", "now()", "NULL"),
            ("running", "llm-chat", "now()", "NULL"),
            ("succeeded", "llm-chat", "now()", "now()"),
            ("failed", "sdxl", "now()", "now()"),
            ("succeeded", "sdxl", "now() - interval '1 day'", "now() - interval '2 hours'"),
        ]
        for state, slug, created, completed in jobs:
            await session.execute(
                text(
                    "INSERT INTO jobs (id, user_id, workload_id, state, input, created_at, completed_at) "
                    f"SELECT :id, :uid, id, :state, '{{}}', {created}, {completed} "
                    "FROM workloads WHERE slug = :slug"
                ),
                {"id": uuid.uuid4(), "uid": uid, "state": state, "slug": slug},
            )
        await session.execute(
            text(
                "INSERT INTO transactions (user_id, type, amount) VALUES "
                "(:u, 'charge', -5), (:u, 'charge', -3.5), (:u, 'refund', 2), (:u, 'grant', 100)"
            ),
            {"u": uid},
        )
        await session.execute(
            text(
                "INSERT INTO payouts (owner_id, period_start, amount, status, provider) VALUES "
                "(:u, '2026-11-01', 7.25, 'paid', 'virtual'), (:u, '2026-11-08', 1, 'pending', 'virtual')"
            ),
            {"u": uid},
        )


async def test_collector_gauges_are_in_the_scrape(runtime: Runtime, http: httpx.AsyncClient) -> None:
    await insert_fixtures(runtime)
    await MetricsCollector(runtime).collect_all()
    s = await scrape(http)

    assert value(s, "coordinator_islands", status="online", region="eu") == 2
    assert value(s, "coordinator_islands", status="offline", region="us") == 1
    assert value(s, "coordinator_islands", status="online", region="unknown") == 1
    assert value(s, "coordinator_fleet_capacity_slots") == 6
    assert value(s, "coordinator_fleet_busy_slots") == 2
    assert value(s, "coordinator_fleet_warm_islands", workload="llm-chat") == 2
    assert value(s, "coordinator_fleet_warm_islands", workload="sdxl") == 1

    assert value(s, "coordinator_jobs", state="queued", workload="llm-chat") == 2
    assert value(s, "coordinator_jobs", state="queued", workload="sdxl") == 1
    assert value(s, "coordinator_jobs", state="running", workload="llm-chat") == 1
    assert value(s, "coordinator_jobs", state="running", workload="sdxl") is None
    assert value(s, "coordinator_jobs_finished_last_hour", state="succeeded", workload="llm-chat") == 1
    assert value(s, "coordinator_jobs_finished_last_hour", state="failed", workload="sdxl") == 1
    # Finished two hours ago: outside the window.
    assert value(s, "coordinator_jobs_finished_last_hour", state="succeeded", workload="sdxl") is None
    assert value(s, "coordinator_job_queue_depth") == 3
    oldest = value(s, "coordinator_job_queue_oldest_seconds")
    assert oldest is not None and 42 <= oldest < 100

    assert value(s, "coordinator_billing_charged_credits") == 8.5
    assert value(s, "coordinator_billing_refunded_credits") == 2
    assert value(s, "coordinator_billing_revenue_credits") == 6.5
    assert value(s, "coordinator_billing_transactions", type="charge") == 2
    assert value(s, "coordinator_billing_payout_credits", status="paid") == 7.25
    assert value(s, "coordinator_billing_payouts", status="pending") == 1


async def test_a_label_set_that_disappears_leaves_the_scrape(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    await insert_fixtures(runtime)
    collector = MetricsCollector(runtime)
    await collector.collect_all()
    assert value(await scrape(http), "coordinator_islands", status="offline", region="us") == 1
    async with runtime.db.transaction() as session:
        await session.execute(text("DELETE FROM hosts WHERE region = 'us'"))
    await collector.collect_all()
    assert value(await scrape(http), "coordinator_islands", status="offline", region="us") is None


async def test_a_failing_poll_is_counted_and_keeps_the_loop_alive(runtime: Runtime) -> None:
    collector = MetricsCollector(runtime)
    fleet = collector.groups[0]
    async with runtime.db.transaction() as session:
        await session.execute(text("ALTER TABLE hosts RENAME TO hosts_gone"))
    before = _counter("coordinator_collector_errors_total", group="fleet")
    assert await collector.poll(fleet) is False
    assert _counter("coordinator_collector_errors_total", group="fleet") == before + 1


def _counter(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_http_duration_is_labelled_with_the_route_template(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    await seed_cargos(runtime)
    consumer = await make_consumer(runtime)
    labels = {"method": "GET", "route": "/api/v1/workloads/{slug}", "status": "200"}
    before = _counter("coordinator_http_request_seconds_count", **labels)
    response = await http.get("/api/v1/workloads/llm-chat", headers=consumer.headers)
    assert response.status_code == 200
    s = await scrape(http)
    assert value(s, "coordinator_http_request_seconds_count", **labels) == before + 1
    raw = [
        k
        for k in s
        if k[0].startswith("coordinator_http") and ("route", "/api/v1/workloads/llm-chat") in k[1]
    ]
    assert raw == []
    unknown = await http.get("/no/such/path/123")
    assert unknown.status_code == 404
    s = await scrape(http)
    assert value(s, "coordinator_http_request_seconds_count", method="GET", route="unmatched", status="404")


async def test_database_queries_and_pool_are_measured(runtime: Runtime, http: httpx.AsyncClient) -> None:
    supervisor = Supervisor([TelemetryChild(runtime)])
    await supervisor.start()
    try:
        before = _counter("coordinator_db_query_seconds_count", kind="select")
        async with runtime.db.session() as session:
            await session.execute(text("SELECT 1"))
            checked_out = _counter("coordinator_db_pool_checked_out_connections")
        after_checkin = _counter("coordinator_db_pool_checked_out_connections")
        assert _counter("coordinator_db_query_seconds_count", kind="select") == before + 1
        assert checked_out == after_checkin + 1
        assert _counter("coordinator_db_pool_capacity_connections") >= 20
        s = await scrape(http)
        assert value(s, "coordinator_db_query_seconds_count", kind="select") is not None
    finally:
        await supervisor.stop()
    # Detached: statements are no longer counted.
    stopped = _counter("coordinator_db_query_seconds_count", kind="select")
    async with runtime.db.session() as session:
        await session.execute(text("SELECT 1"))
    assert _counter("coordinator_db_query_seconds_count", kind="select") == stopped


@pytest_asyncio.fixture
async def production(database_url: str) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    settings = make_settings(database_url, env="production", metrics_token="scrape-token-123")
    runtime = Runtime.from_settings(settings)
    supervisor = Supervisor([HttpChild(runtime)])
    await supervisor.start()
    try:
        async with httpx.AsyncClient(base_url=runtime.base_url, timeout=30) as client:
            yield runtime, client
    finally:
        await supervisor.stop()
        await runtime.db.dispose()


async def test_production_scrape_needs_the_token_or_an_admin(
    production: tuple[Runtime, httpx.AsyncClient],
) -> None:
    runtime, client = production
    anonymous = await client.get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthorized"
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401

    scraped = await client.get("/metrics", headers={"Authorization": "Bearer scrape-token-123"})
    assert scraped.status_code == 200
    assert "coordinator_http_request_seconds" in {
        f.name for f in text_string_to_metric_families(scraped.text)
    }

    user = await make_consumer(runtime, "user@example.com")
    assert (await client.get("/metrics", headers=user.headers)).status_code == 403
    admin = await make_consumer(runtime, "ops@example.com", admin=True)
    assert (await client.get("/metrics", headers=admin.headers)).status_code == 200


async def test_openmetrics_is_served_when_asked(http: httpx.AsyncClient) -> None:
    response = await http.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


async def test_ledger_totals_fold_settled_rows_and_reread_recent_ones(runtime: Runtime) -> None:
    consumer = await make_consumer(runtime, credits=0)
    insert = text(
        "INSERT INTO transactions (user_id, type, amount, created_at) "
        "VALUES (:u, :type, :amount, now() - make_interval(secs => :age))"
    )
    ledger = LedgerTotals(settle_seconds=300)

    async def add(kind: str, amount: str, age: int) -> None:
        async with runtime.db.transaction() as session:
            await session.execute(insert, {"u": consumer.user.id, "type": kind, "amount": amount, "age": age})

    async def read() -> dict[str, tuple[int, Decimal]]:
        async with runtime.db.session() as session:
            return await ledger.read(session)

    await add("charge", "-4", 3600)
    await add("refund", "1", 3600)
    await add("charge", "-2", 0)
    assert await read() == {"charge": (2, Decimal(-6)), "refund": (1, Decimal(1))}
    folded_up_to = ledger.watermark
    assert folded_up_to > 0 and ledger.folded == {"charge": (1, Decimal(-4)), "refund": (1, Decimal(1))}
    # The recent row is re-read, not folded twice; new rows are added.
    await add("charge", "-1.5", 0)
    assert await read() == {"charge": (3, Decimal("-7.5")), "refund": (1, Decimal(1))}
    assert ledger.watermark == folded_up_to
    # Once a row is old enough it is folded, and the totals stay the same.
    async with runtime.db.transaction() as session:
        await session.execute(text("UPDATE transactions SET created_at = now() - interval '1 hour'"))
    assert await read() == {"charge": (3, Decimal("-7.5")), "refund": (1, Decimal(1))}
    assert ledger.watermark > folded_up_to and ledger.folded["charge"] == (3, Decimal("-7.5"))


async def test_the_serving_tree_polls_at_start_and_exposes_the_gauges(database_url: str) -> None:
    from coordinator.app import build_children

    runtime = Runtime.from_settings(make_settings(database_url))
    await insert_fixtures(runtime)
    metrics.snapshots.clear()  # values left by other tests must not satisfy this one
    supervisor = Supervisor(build_children(runtime))
    await supervisor.start()
    try:
        assert supervisor.names[:3] == ["telemetry", "database", "collectors"]
        async with httpx.AsyncClient(base_url=runtime.base_url, timeout=30) as client:
            for _ in range(100):
                s = await scrape(client)
                # The groups publish one after the other: wait for the last one.
                if value(s, "coordinator_billing_charged_credits") is not None:
                    break
                await asyncio.sleep(0.05)
        assert value(s, "coordinator_job_queue_depth") == 3
        assert value(s, "coordinator_billing_charged_credits") == 8.5
        assert value(s, "coordinator_db_query_seconds_count", kind="select")
    finally:
        await supervisor.stop()
        await runtime.db.dispose()


async def test_a_worker_process_serves_metrics_on_its_own_port(database_url: str) -> None:
    from coordinator.app import build_children
    from coordinator.devstack import free_port
    from coordinator.telemetry.endpoint import MetricsEndpointChild
    from coordinator.workers.app import _timed

    port = free_port()
    settings = make_settings(database_url, env="production", metrics_token="tok-worker-1", metrics_port=port)
    runtime = Runtime.from_settings(settings)
    children = build_children(runtime, with_worker=True, http=False)
    names = [c.name for c in children]
    assert names[:2] == ["telemetry", "database"]
    assert names[-3:] == ["worker", "metrics_endpoint", "ready-marker"]
    assert "http" not in names and "collectors" not in names
    assert isinstance(children[-2], MetricsEndpointChild)

    async def body() -> dict[str, int]:
        return {}

    await _timed("t_worker_port", body)
    supervisor = Supervisor(children)
    await supervisor.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            denied = await client.get("/metrics")
            assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
            assert (await client.get("/other")).status_code == 404
            ok = await client.get("/metrics", headers={"Authorization": "Bearer tok-worker-1"})
        assert ok.status_code == 200
        s = parse(ok.text)
        assert value(s, "coordinator_worker_runs_total", worker="t_worker_port", outcome="success") == 1
    finally:
        await supervisor.stop()
        await runtime.db.dispose()
