"""The job lifecycle wired to the exchange, quotas, karma and ledger metrics (real PostgreSQL and NATS)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import pytest_asyncio
from sqlalchemy import text

from coordinator.billing import exchange as market
from coordinator.billing.exchange import TtlCache
from coordinator.jobs import lifecycle, rules
from coordinator.karma.rules import KarmaPolicy, KarmaState, apply_success
from coordinator.telemetry import metrics
from coordinator.workloads import service as workloads
from tests.factories import make_consumer, seed_cargos
from tests.job_stack import CHAT, JobStack, islands, job_stack, submit, wait_status
from tests.job_support import balance, host_row, job_row, karma_events, make_island, transactions_of


@pytest_asyncio.fixture
async def stack(database_url: str, nats_url: str) -> AsyncIterator[JobStack]:
    # Small quota settings keep the 429 tests fast; the production defaults (20/200/1,000) stay untouched.
    async with job_stack(
        database_url, nats_url, active_jobs_unverified=2, daily_spend_unverified=1_000.0
    ) as s:
        await seed_cargos(s.runtime)
        async with s.runtime.db.transaction() as session:
            await session.execute(text("UPDATE workloads SET cold_start_seconds = 0"))
        yield s


def counted(kind: str) -> float:
    value: float = metrics.credits_moved.labels(type=kind)._value.get()
    return value


async def test_submit_budget_is_the_saved_bid_then_the_market_rate_with_markup(stack: JobStack) -> None:
    await make_island(stack.runtime)  # registered but not live: the jobs stay queued
    consumer = await make_consumer(stack.runtime)
    now = [0.0]
    stack.runtime.market_rates = TtlCache[Decimal | None](ttl=10, clock=lambda: now[0])
    async with stack.runtime.db.transaction() as session:
        workload = await workloads.get_by_slug(session, "llm-chat")
        base = Decimal(workload.price_per_job)
    first = await job_row(stack.runtime, await submit(stack, consumer))
    assert first.budget == base  # no bid, no market: the base price
    # A recent clearing price makes a market rate: budget = rate × 1.05, rounded up.
    async with stack.runtime.db.transaction() as session:
        await session.execute(
            text(
                "UPDATE jobs SET state = 'succeeded', clearing_price = 0.8, completed_at = now() "
                "WHERE id = :id"
            ),
            {"id": first.id},
        )
    # The market rate is recomputed at most every 10 s per Cargo.
    cached = await job_row(stack.runtime, await submit(stack, consumer))
    assert cached.budget == base
    async with stack.runtime.db.transaction() as session:  # out of the way of the active-job quota
        await session.execute(text("UPDATE jobs SET state = 'cancelled' WHERE id = :id"), {"id": cached.id})
    now[0] += 10
    market_job = await job_row(stack.runtime, await submit(stack, consumer))
    assert market_job.budget == Decimal("0.84")
    async with stack.runtime.db.transaction() as session:
        await market.save_bid(session, consumer.user.id, "llm-chat", Decimal("0.3"))
    saved = await job_row(stack.runtime, await submit(stack, consumer, CHAT))
    assert saved.budget == Decimal("0.3") and saved.charged == Decimal("0.3")
    explicit = await stack.http.post("/api/v1/jobs", headers=consumer.headers, json={**CHAT, "budget": 2})
    assert explicit.status_code == 429  # two active jobs already (the quota of this stack)


async def test_submit_over_the_active_job_quota_is_429_in_the_envelope(stack: JobStack) -> None:
    await make_island(stack.runtime)
    consumer = await make_consumer(stack.runtime)
    await submit(stack, consumer)
    await submit(stack, consumer)
    response = await stack.http.post("/api/v1/jobs", headers=consumer.headers, json=CHAT)
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "too_many_active_jobs" and "2 of 2" in error["message"]
    assert int(response.headers["retry-after"]) >= 1
    async with stack.runtime.db.transaction() as session:
        base = Decimal((await workloads.get_by_slug(session, "llm-chat")).price_per_job)
    assert await balance(stack.runtime, consumer.user.id) == Decimal(10_000) - 2 * base  # nothing charged


async def test_submit_over_the_daily_spend_of_an_unverified_user_is_429(stack: JobStack) -> None:
    await make_island(stack.runtime)
    consumer = await make_consumer(stack.runtime)
    await submit(stack, consumer, {**CHAT, "budget": 600})
    response = await stack.http.post("/api/v1/jobs", headers=consumer.headers, json={**CHAT, "budget": 600})
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "daily_spend_limit"
    assert await balance(stack.runtime, consumer.user.id) == Decimal(9_400)  # the refused job charged nothing


async def test_success_pays_ask_times_surge_and_credits_karma_once(stack: JobStack, nats_url: str) -> None:
    # Surge is high right now: many jobs queued, no free slot (primed through the cache's own API; it holds
    # for 30 s), so the default multiplier, 1.25, applies.
    async def high() -> tuple[int, int]:
        return 1_000, 0

    await stack.runtime.surge.cache.get(high)
    charge, refund, earning = counted("charge"), counted("refund"), counted("earning")
    (island,) = await islands(stack, nats_url, "succeed", asking_prices={"llm-chat": "0.4"})
    consumer = await make_consumer(stack.runtime)
    try:
        job_id = await submit(stack, consumer, {**CHAT, "budget": 1})
        job = await wait_status(stack, consumer, job_id, "completed")
        row = await job_row(stack.runtime, job_id)
        assert row.clearing_price == Decimal("0.5")  # 0.4 × 1.25, under the budget
        assert job["usage"]["credits_used"] == 0.5
        assert await transactions_of(stack.runtime, row.id) == [
            ("charge", Decimal(-1)),
            ("refund", Decimal("0.5")),
        ]
        assert (await host_row(stack.runtime, island.host_id)).earnings_total == Decimal("0.5")
        assert [e for e, _ in await karma_events(stack.runtime, island.host_id)] == ["job_succeeded"]
        # The counters are process-wide floats that earlier tests already moved: compare the deltas.
        assert counted("charge") - charge == pytest.approx(1.0)
        assert counted("refund") - refund == pytest.approx(0.5)
        assert counted("earning") - earning == pytest.approx(0.5)
    finally:
        await island.stop()


async def test_the_dispatchers_surge_follows_the_surge_settings(database_url: str, nats_url: str) -> None:
    # Demand ratio 0: any queued job is "more than 0 × capacity", so the settings' multiplier applies at
    # assignment (the built-in 1.25 after twice the capacity would leave a lone job at surge 1).
    async with job_stack(database_url, nats_url, surge_multiplier=1.5, surge_demand_ratio=0.0) as stack:
        await seed_cargos(stack.runtime)
        async with stack.runtime.db.transaction() as session:
            await session.execute(text("UPDATE workloads SET cold_start_seconds = 0"))
        (island,) = await islands(stack, nats_url, "succeed", asking_prices={"llm-chat": "0.4"})
        consumer = await make_consumer(stack.runtime)
        try:
            job_id = await submit(stack, consumer, {**CHAT, "budget": 1})
            await wait_status(stack, consumer, job_id, "completed")
            assert (await job_row(stack.runtime, job_id)).clearing_price == Decimal("0.6")  # 0.4 × 1.5
        finally:
            await island.stop()


async def test_clearing_price_is_capped_at_the_budget(stack: JobStack, nats_url: str) -> None:
    async def high() -> tuple[int, int]:
        return 1_000, 0  # surge 1.25 (the default multiplier)

    await stack.runtime.surge.cache.get(high)
    (island,) = await islands(stack, nats_url, "succeed", asking_prices={"llm-chat": "0.9"})
    consumer = await make_consumer(stack.runtime)
    try:
        job_id = await submit(stack, consumer, {**CHAT, "budget": 1})
        await wait_status(stack, consumer, job_id, "completed")
        assert (await job_row(stack.runtime, job_id)).clearing_price == Decimal(1)
        assert await balance(stack.runtime, consumer.user.id) == Decimal(9_999)
    finally:
        await island.stop()


async def test_success_karma_counts_the_minutes_once_and_reaches_the_fleet_view(
    stack: JobStack, nats_url: str
) -> None:
    (island,) = await islands(stack, nats_url, "hang")
    consumer = await make_consumer(stack.runtime)
    try:
        job_id = await submit(stack, consumer)
        await wait_status(stack, consumer, job_id, "running")
        async with stack.runtime.db.transaction() as session:
            # 150 minutes of running, within its Cargo's maximum (else the lease sweeper, every 0.2 s here,
            # may time the job out before the finish below)
            await session.execute(
                text(
                    "UPDATE workloads SET max_duration_seconds = 86400"
                    " WHERE id = (SELECT workload_id FROM jobs WHERE id = :id)"
                ),
                {"id": uuid.UUID(job_id)},
            )
            await session.execute(
                text("UPDATE jobs SET started_at = now() - interval '150 minutes' WHERE id = :id"),
                {"id": uuid.UUID(job_id)},
            )
        done = await lifecycle.finish(
            stack.runtime, uuid.UUID(job_id), rules.SUCCEEDED, host_id=island.host_id, output="ok"
        )
        assert done is not None
        again = await lifecycle.finish(
            stack.runtime, uuid.UUID(job_id), rules.SUCCEEDED, host_id=island.host_id, output="ok"
        )
        assert again is None
        events = await karma_events(stack.runtime, island.host_id)
        assert [e for e, _ in events] == ["job_succeeded"] and events[0][1] >= 2
        karma = (await host_row(stack.runtime, island.host_id)).karma
        assert karma == events[0][1]
        view = stack.fleet.get(island.host_id)
        assert view is not None and view.karma == karma
    finally:
        await island.stop()


async def test_only_an_islands_own_fault_costs_karma(stack: JobStack, nats_url: str) -> None:
    (island,) = await islands(stack, nats_url, "hang")
    consumer = await make_consumer(stack.runtime)
    try:
        ours = await submit(stack, consumer)
        theirs = await submit(stack, consumer)
        await wait_status(stack, consumer, ours, "running")
        await wait_status(stack, consumer, theirs, "running")
        app_error = "Container crash: General error (application failure)"
        await lifecycle.finish(
            stack.runtime, uuid.UUID(ours), rules.FAILED, host_id=island.host_id, error=app_error
        )
        await lifecycle.finish(
            stack.runtime,
            uuid.UUID(theirs),
            rules.FAILED,
            host_id=island.host_id,
            error="Failed to ensure container image: pull denied",
        )
        assert await karma_events(stack.runtime, island.host_id) == [("job_failed", -1)]
        view = stack.fleet.get(island.host_id)
        assert view is not None and view.karma == -1
        assert await balance(stack.runtime, consumer.user.id) == Decimal(10_000)  # both refunded
    finally:
        await island.stop()


async def test_success_karma_counts_with_the_operators_karma_settings(
    database_url: str, nats_url: str
) -> None:
    settings = {
        "karma_minutes_per_karma": 30,
        "karma_recovery_multiplier": 2.0,
        "karma_monetization_threshold": 5,
    }
    async with job_stack(database_url, nats_url, **settings) as stack:
        await seed_cargos(stack.runtime)
        async with stack.runtime.db.transaction() as session:
            await session.execute(
                text("UPDATE workloads SET cold_start_seconds = 0, max_duration_seconds = 86400")
            )
        (island,) = await islands(stack, nats_url, "hang")
        consumer = await make_consumer(stack.runtime)
        try:
            job_id = uuid.UUID(await submit(stack, consumer))
            await wait_status(stack, consumer, str(job_id), "running")
            async with stack.runtime.db.transaction() as session:
                await session.execute(
                    text("UPDATE jobs SET started_at = now() - interval '40 minutes' WHERE id = :id"),
                    {"id": job_id},
                )
            assert await lifecycle.finish(stack.runtime, job_id, rules.SUCCEEDED, host_id=island.host_id)
            row = await job_row(stack.runtime, job_id)
            took = (row.completed_at - row.started_at).total_seconds()
            policy = KarmaPolicy(
                minutes_per_karma=30, recovery_multiplier=Decimal(2), monetization_threshold=5
            )
            expected = apply_success(KarmaState(0, 0), took, policy).after
            # 40 minutes below the threshold, ×2 = 80: 2 karma and 20 pending (the built-in 60/1.5 would
            # give 1 and 0).
            assert (expected.karma, expected.pending_minutes) == (2, 20)
            host = await host_row(stack.runtime, island.host_id)
            assert (host.karma, host.pending_minutes) == (2, 20)
        finally:
            await island.stop()
