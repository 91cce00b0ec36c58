"""Issue 6 end to end: one job's life over HTTP and NATS shows in `/metrics` and in its log lines."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from sqlalchemy import text

from coordinator.app import build_children
from coordinator.runtime import Runtime
from coordinator.supervisor import Supervisor
from coordinator.telemetry.collectors import MetricsCollector
from tests.conftest import make_settings
from tests.factories import make_consumer, seed_cargos
from tests.job_stack import JobStack, islands, submit, wait_status
from tests.telemetry_support import Samples, captured_logs, lines_with, scrape, value


@pytest_asyncio.fixture
async def stack(database_url: str, nats_url: str) -> AsyncIterator[JobStack]:
    """The whole supervision tree of `coordinator serve` (streaming, collectors, hosts, jobs, HTTP)."""
    runtime = Runtime.from_settings(make_settings(database_url, nats_url=nats_url))
    supervisor = Supervisor(build_children(runtime))
    await supervisor.start()
    try:
        await seed_cargos(runtime)
        async with runtime.db.transaction() as session:
            await session.execute(text("UPDATE workloads SET cold_start_seconds = 0"))
        async with httpx.AsyncClient(base_url=runtime.base_url, timeout=30) as client:
            yield JobStack(runtime, client)
    finally:
        await supervisor.stop()
        await runtime.db.dispose()


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return (value(after, name, **labels) or 0.0) - (value(before, name, **labels) or 0.0)


async def test_a_finished_job_is_counted_timed_and_charged_in_the_scrape(
    stack: JobStack, nats_url: str
) -> None:
    (island,) = await islands(stack, nats_url, "succeed", asking_prices={"llm-chat": "0.4", "_default": "9"})
    consumer = await make_consumer(stack.runtime)
    before = await scrape(stack.http)
    try:
        job_id = await submit(stack, consumer)
        await wait_status(stack, consumer, job_id, "completed")
    finally:
        await island.stop()
    await MetricsCollector(stack.runtime).collect_all()
    after = await scrape(stack.http)

    transitions = "coordinator_job_transitions_total"
    assert delta(after, before, transitions, from_state="submitted", to_state="queued") == 1
    assert delta(after, before, transitions, from_state="queued", to_state="assigned") == 1
    assert delta(after, before, transitions, from_state="assigned", to_state="running") == 1
    assert delta(after, before, transitions, from_state="running", to_state="succeeded") == 1
    assert delta(after, before, "coordinator_jobs_submitted_total", workload="llm-chat") == 1
    assert delta(after, before, "coordinator_job_submit_to_assign_seconds_count") == 1
    assert delta(after, before, "coordinator_job_time_to_first_token_seconds_count") == 1
    assert delta(after, before, "coordinator_nats_messages_total", subject_class="status") >= 2
    assert delta(after, before, "coordinator_nats_messages_total", subject_class="output") >= 1
    # The database gauges (a fresh database per test): this job, its charge and its refund.
    finished = value(after, "coordinator_jobs_finished_last_hour", state="succeeded", workload="llm-chat")
    assert finished == 1
    assert value(after, "coordinator_jobs", state="running", workload="llm-chat") is None
    assert value(after, "coordinator_billing_charged_credits") == 1.0
    assert value(after, "coordinator_billing_refunded_credits") == 0.6
    assert value(after, "coordinator_billing_revenue_credits") == 0.4
    # ...and the ledger movements this process made, counted as they committed.
    assert delta(after, before, "coordinator_credits_total", type="charge") == 1.0
    assert round(delta(after, before, "coordinator_credits_total", type="refund"), 6) == 0.6


async def test_one_jobs_log_lines_are_found_by_its_job_id_alone(stack: JobStack, nats_url: str) -> None:
    (island,) = await islands(stack, nats_url, "succeed")
    consumer = await make_consumer(stack.runtime)
    with captured_logs() as logs:
        try:
            job_id = await submit(stack, consumer)
            await wait_status(stack, consumer, job_id, "completed")
        finally:
            await island.stop()

    lines = lines_with(logs, job_id=job_id)
    events = [line["event"] for line in lines]
    for expected in ("job.submitted", "job.assigned", "job.started", "job.succeeded"):
        assert expected in events, events
    assert events.index("job.submitted") < events.index("job.assigned") < events.index("job.started")
    assert events.index("job.started") < events.index("job.succeeded")
    by_event = {line["event"]: line for line in lines}
    # The HTTP submit carries the request and the caller; the Island's messages carry the Island.
    submitted = by_event["job.submitted"]
    assert submitted.get("request_id") and submitted["user_id"] == str(consumer.user.id)
    assert by_event["job.assigned"]["host_id"] == island.id
    assert by_event["job.started"]["host_id"] == island.id
    assert by_event["job.succeeded"]["host_id"] == island.id
    # No other job's lines: every line with this id is about this job.
    assert all(line["job_id"] == job_id for line in lines)
