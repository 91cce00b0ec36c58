"""Submit in one statement against the cached catalogue: a changed Cargo is never charged or refused on a
stale copy, the quota and credit refusals write nothing, and the statement count is the one we promise."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from coordinator.billing import quotas
from coordinator.errors import RateLimited
from coordinator.jobs import service as jobs
from coordinator.runtime import Runtime
from tests.factories import make_consumer, seed_cargos
from tests.job_support import (
    assert_money_conserved,
    balance,
    job_row,
    make_island,
    statements_of,
    transactions_of,
)

CHAT = {"workload": "llm-chat", "input": {"prompt": "Hello", "max_tokens": 16}}


async def _sql(runtime: Runtime, statement: str, **params: Any) -> Any:
    async with runtime.db.transaction() as session:
        result = await session.execute(text(statement), params)
        return result.scalar() if result.returns_rows else None


async def test_a_cargo_changed_behind_the_cache_is_priced_and_checked_afresh(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    await seed_cargos(runtime)
    await make_island(runtime)
    consumer = await make_consumer(runtime)
    first = await http.post("/api/v1/jobs", headers=consumer.headers, json=CHAT)
    assert first.status_code == 201 and runtime.catalogue.cached("llm-chat") is not None

    # An operator's psql, not our ORM: the trigger still bumps the revision the submit statement checks.
    await _sql(runtime, "UPDATE workloads SET price_per_job = 3 WHERE slug = 'llm-chat'")
    repriced = await http.post("/api/v1/jobs", headers=consumer.headers, json=CHAT)
    assert repriced.status_code == 201
    assert await transactions_of(runtime, uuid.UUID(repriced.json()["data"]["id"])) == [
        ("charge", Decimal(-3))
    ]

    await _sql(runtime, "UPDATE workloads SET is_enabled = false WHERE slug = 'llm-chat'")
    disabled = await http.post("/api/v1/jobs", headers=consumer.headers, json=CHAT)
    assert disabled.status_code == 422 and disabled.json()["errors"] == {"workload": ["is disabled"]}

    # The cache now holds the disabled copy; a refusal is re-checked against the database, so the very next
    # submit after re-enabling is accepted.
    await _sql(runtime, "UPDATE workloads SET is_enabled = true WHERE slug = 'llm-chat'")
    assert runtime.catalogue.cached("llm-chat").is_enabled is False  # type: ignore[union-attr]
    enabled = await http.post("/api/v1/jobs", headers=consumer.headers, json=CHAT)
    assert enabled.status_code == 201

    await _sql(runtime, "UPDATE workloads SET slug = 'llm-chat-old' WHERE slug = 'llm-chat'")
    gone = await http.post("/api/v1/jobs", headers=consumer.headers, json=CHAT)
    assert gone.status_code == 404
    assert await balance(runtime, consumer.user.id) == Decimal(10_000) - 1 - 3 - 3
    await assert_money_conserved(runtime)


async def test_the_revision_moves_with_what_submissions_use_and_not_with_reputation(runtime: Runtime) -> None:
    await seed_cargos(runtime)
    revision = "SELECT revision FROM workloads WHERE slug = 'llm-chat'"
    start = await _sql(runtime, revision)
    await _sql(
        runtime,
        "UPDATE workloads SET reputation = 0.5, success_streak = 3, updated_at = now() "
        "WHERE slug = 'llm-chat'",
    )
    assert await _sql(runtime, revision) == start
    await _sql(runtime, "UPDATE workloads SET input_schema = '{}'::jsonb WHERE slug = 'llm-chat'")
    await _sql(runtime, "UPDATE workloads SET required_ram_mb = required_ram_mb + 1 WHERE slug = 'llm-chat'")
    assert await _sql(runtime, revision) == start + 2


async def test_a_stale_revision_is_detected_by_the_statement_and_the_submit_redone(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    """The copy looks valid to Python (same price, enabled) but the database moved on: the statement
    refuses to charge it, the coordinator reads the Cargo again and charges the current one once."""
    await seed_cargos(runtime)
    await make_island(runtime)
    consumer = await make_consumer(runtime)
    cargo = await runtime.catalogue.load(runtime.db, "llm-chat")
    await _sql(runtime, "UPDATE workloads SET price_per_job = 2 WHERE slug = 'llm-chat'")
    runtime.catalogue._cargos["llm-chat"] = dataclasses.replace(cargo, price_per_job=Decimal(1))
    response = await http.post("/api/v1/jobs", headers=consumer.headers, json=CHAT)
    assert response.status_code == 201
    job = await job_row(runtime, response.json()["data"]["id"])
    assert job.charged == Decimal(2)
    assert runtime.catalogue.cached("llm-chat").revision == cargo.revision + 1  # type: ignore[union-attr]
    assert await balance(runtime, consumer.user.id) == Decimal(9_998)
    await assert_money_conserved(runtime)


async def test_submit_is_one_statement_once_the_cargo_is_cached(runtime: Runtime) -> None:
    await seed_cargos(runtime)
    await make_island(runtime, fleet=runtime.fleet)  # a live Island: capability is checked in memory
    consumer = await make_consumer(runtime)
    await jobs.submit_job(runtime, consumer.user, "llm-chat", CHAT["input"])  # warms the catalogue
    with statements_of(runtime) as seen:
        submitted = await jobs.submit(runtime, consumer.user, "llm-chat", CHAT["input"])
    assert len(seen) == 1 and "INSERT INTO jobs" in seen[0], seen
    assert submitted.queue_position == 2  # the warm-up job is still queued ahead of it


async def test_quota_caps_at_their_boundaries_in_the_statement(runtime: Runtime) -> None:
    """The statement applies `quotas.submit_refusal`'s comparisons: exactly at the daily cap is allowed, a
    cent over is refused with the counts in the message, and a refused submit writes nothing."""
    runtime.settings.daily_spend_unverified = 10
    await seed_cargos(runtime)
    await make_island(runtime)
    consumer = await make_consumer(runtime)
    assert quotas.caps_for(consumer.user).daily_spend is not None  # unverified
    await jobs.submit_job(runtime, consumer.user, "llm-chat", CHAT["input"], budget="9.99")
    with pytest.raises(RateLimited) as refused:
        await jobs.submit_job(runtime, consumer.user, "llm-chat", CHAT["input"], budget="0.02")
    assert refused.value.code == "daily_spend_limit" and "spent 9.99 of 10" in refused.value.message
    await jobs.submit_job(runtime, consumer.user, "llm-chat", CHAT["input"], budget="0.01")
    assert await balance(runtime, consumer.user.id) == Decimal(9_990)
    await assert_money_conserved(runtime)


async def test_concurrent_submits_on_one_balance_never_overdraw(runtime: Runtime) -> None:
    """32 submits race for a balance that covers 10: exactly 10 jobs exist, each with its own charge."""
    await seed_cargos(runtime)
    await make_island(runtime)
    consumer = await make_consumer(runtime, credits=Decimal(10))

    async def one() -> bool:
        try:
            await jobs.submit_job(runtime, consumer.user, "llm-chat", CHAT["input"], budget=1)
            return True
        except Exception as error:  # the refusals: 402 (credits) and nothing else
            assert type(error).__name__ == "InsufficientCredits", error
            return False

    results = await asyncio.gather(*(one() for _ in range(32)))
    assert sum(results) == 10
    assert await balance(runtime, consumer.user.id) == 0
    count = await _sql(runtime, "SELECT count(*) FROM jobs WHERE user_id = :u", u=consumer.user.id)
    charges = await _sql(
        runtime,
        "SELECT count(*) FROM transactions WHERE user_id = :u AND type = 'charge'",
        u=consumer.user.id,
    )
    assert count == charges == 10
    await assert_money_conserved(runtime)
