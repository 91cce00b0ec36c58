"""The official clients' first hour, end to end: a full coordinator tree (NATS, heartbeats, dispatcher,
accumulator, HTTP), fake Islands speaking the wire protocol, and requests made as the clients make them
(`tests/client_contract.py`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text

from coordinator.hosts.fleet import FleetView, HostView
from coordinator.protocol.messages import parse_heartbeat
from coordinator.runtime import Runtime
from tests.client_contract import (
    cli_headers,
    cli_job,
    cli_market_rate,
    cli_stream_event,
    py_headers,
    sse_data,
    ts_headers,
)
from tests.factories import make_consumer, seed_cargos
from tests.fake_island import FakeIsland, dumps
from tests.islands_support import running_coordinator
from tests.job_stack import eventually
from tests.job_support import assert_money_conserved, balance, transactions_of

CHAT = {"workload": "llm-chat", "input": {"prompt": "Hello there, Island", "max_tokens": 64}}


@pytest_asyncio.fixture
async def coordinator(
    request: pytest.FixtureRequest, database_url: str, nats_url: str
) -> AsyncIterator[Runtime]:
    # A short unplaceable timeout for the price test; a test can ask for another by indirect parameter.
    unplaceable = getattr(request, "param", 1.5)
    async with running_coordinator(
        database_url,
        nats_url,
        metrics_collectors=False,
        output_flush_interval_seconds=0.02,
        dispatch_interval_seconds=0.5,
        job_unplaceable_timeout_seconds=unplaceable,
    ) as runtime:
        await seed_cargos(runtime)
        async with runtime.db.transaction() as session:
            await session.execute(text("UPDATE workloads SET cold_start_seconds = 0"))
        yield runtime


@pytest_asyncio.fixture
async def http(coordinator: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=coordinator.base_url, timeout=30) as client:
        yield client


async def start_island(runtime: Runtime, nats_url: str, **kw: Any) -> FakeIsland:
    """An Island known only from its heartbeats (no registration, no row made by the test)."""
    island = FakeIsland(nats_url, heartbeat_every=kw.pop("heartbeat_every", 0.2), **kw)
    await island.start()
    fleet = runtime.fleet
    assert fleet is not None

    async def live() -> bool:
        view = fleet.get(island.host_id)
        return view is not None and view.can_take_work(fleet.clock(), fleet.heartbeat_timeout)

    if island.runtimes:
        await eventually(live)
    else:
        await eventually(lambda: _known(runtime, island))
    return island


async def _known(runtime: Runtime, island: FakeIsland) -> bool:
    fleet = runtime.fleet
    return fleet is not None and fleet.get(island.host_id) is not None


async def get_job(http: httpx.AsyncClient, key: str, job_id: str) -> dict[str, Any]:
    response = await http.get(f"/api/v1/jobs/{job_id}", headers=py_headers(key))
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()["data"]
    return job


async def wait_for_job(http: httpx.AsyncClient, key: str, job_id: str, within: float = 15) -> dict[str, Any]:
    """The Python SDK's `wait_for_job`: poll GET /jobs/{id} until a terminal status."""

    async def check() -> dict[str, Any] | None:
        job = await get_job(http, key, job_id)
        return job if job["status"] in ("completed", "failed", "cancelled", "timeout") else None

    result: dict[str, Any] = await eventually(check, within=within)
    return result


def test_an_empty_runtime_list_is_none_and_only_a_missing_field_is_defaulted() -> None:
    beat = FakeIsland("nats://unused", runtimes=()).heartbeat()
    assert parse_heartbeat(dumps(beat)).performance_estimates.supported_runtimes == []
    beat = FakeIsland("nats://unused", runtimes=None).heartbeat()
    assert "supported_runtimes" not in beat["performance_estimates"]
    assert parse_heartbeat(dumps(beat)).performance_estimates.supported_runtimes == ["container", "wasm"]


async def test_an_island_that_lists_no_runtime_never_gets_a_job(
    coordinator: Runtime, http: httpx.AsyncClient, nats_url: str
) -> None:
    consumer = await make_consumer(coordinator)
    island = await start_island(coordinator, nats_url, runtimes=())
    try:
        # The submit check, the exchange and the dispatcher all read the empty list as "none".
        response = await http.post("/api/v1/jobs", headers=cli_headers(consumer.key), json=CHAT)
        assert response.status_code == 422, response.text
        assert "runtime container" in response.json()["errors"]["workload"][0]

        async def flushed() -> bool:
            async with coordinator.db.session() as session:
                row = await session.scalar(
                    text("SELECT supported_runtimes FROM hosts WHERE id = :id"), {"id": island.host_id}
                )
            return row == []

        await eventually(flushed)
        rates = await http.get("/api/v1/market/rates/llm-chat", headers=cli_headers(consumer.key))
        assert rates.status_code == 200
        (rate,) = rates.json()["data"]
        cli_market_rate(rate)
        assert rate["num_hosts"] == 0

        # The same Island lists `container` in its next heartbeat: now it runs the job.
        island.runtimes = ("container",)
        fleet = coordinator.fleet
        assert fleet is not None
        await eventually(lambda: _runtimes_are(coordinator, island, ("container",)))
        response = await http.post("/api/v1/jobs", headers=cli_headers(consumer.key), json=CHAT)
        assert response.status_code == 201, response.text
        job = await wait_for_job(http, consumer.key, response.json()["data"]["id"])
        assert job["status"] == "completed" and job["placement"]["host_id"] == island.id
        assert [a["runtime_type"] for a in island.received] == ["container"]
    finally:
        await island.stop()


async def _runtimes_are(runtime: Runtime, island: FakeIsland, runtimes: tuple[str, ...]) -> bool:
    fleet = runtime.fleet
    view = fleet.get(island.host_id) if fleet is not None else None
    return view is not None and view.supported_runtimes == runtimes


async def test_a_default_budget_meets_the_supply_online_after_a_cheap_island_left(
    coordinator: Runtime, http: httpx.AsyncClient, nats_url: str
) -> None:
    consumer = await make_consumer(coordinator)
    cheap = await start_island(coordinator, nats_url)
    cheap_ask = {"llm-chat": "0.01"}
    try:
        await _post_asks(coordinator, cheap, cheap_ask)
        first = (await http.post("/api/v1/jobs", headers=py_headers(consumer.key), json=CHAT)).json()
        done = await wait_for_job(http, consumer.key, first["data"]["id"])
        assert done["status"] == "completed" and done["usage"]["credits_used"] == 0.01
    finally:
        await cheap.stop()
    demo = await start_island(coordinator, nats_url)
    try:
        await _post_asks(coordinator, demo, {"llm-chat": "0.1"})
        fleet = coordinator.fleet
        assert fleet is not None
        gone = fleet.get(cheap.host_id)
        assert gone is not None
        gone.status = "offline"  # what its heartbeat timeout does, without waiting 30 s
        coordinator.market_rates.clear()  # the rate is 0.01 × 1.05 now
        response = await http.post("/api/v1/jobs", headers=py_headers(consumer.key), json=CHAT)
        assert response.status_code == 201
        created = response.json()["data"]
        assert created["budget"] == 0.1  # not the market rate 0.0105 that no Island online accepts
        job = await wait_for_job(http, consumer.key, created["id"])
        assert job["status"] == "completed" and job["placement"]["host_id"] == demo.id
    finally:
        await demo.stop()


async def _post_asks(runtime: Runtime, island: FakeIsland, asks: dict[str, str]) -> None:
    """The Island's heartbeats carry `asking_prices` from now on; wait until the fleet has them."""
    original = island.heartbeat

    def with_asks() -> dict[str, Any]:
        return {**original(), "asking_prices": asks}

    island.heartbeat = with_asks  # type: ignore[method-assign]
    fleet = runtime.fleet
    assert fleet is not None

    async def applied() -> bool:
        view = fleet.get(island.host_id)
        return view is not None and {k: str(v) for k, v in view.asking_prices.items()} == asks

    await eventually(applied)


async def test_a_job_no_island_can_afford_says_why_then_fails_with_a_full_refund(
    coordinator: Runtime, http: httpx.AsyncClient, nats_url: str
) -> None:
    consumer = await make_consumer(coordinator, credits=Decimal(10))
    island = await start_island(coordinator, nats_url)
    try:
        await _post_asks(coordinator, island, {"llm-chat": "5"})
        response = await http.post(
            "/api/v1/jobs", headers=ts_headers(consumer.key), json={**CHAT, "budget": "0.5"}
        )
        assert response.status_code == 201, response.text
        job_id = response.json()["data"]["id"]

        async def waiting_for_price() -> dict[str, Any] | None:
            job = await get_job(http, consumer.key, job_id)
            placement = job.get("placement") or {}
            return job if placement.get("reason") == "price" else None

        waiting = await eventually(waiting_for_price)
        assert waiting["status"] == "pending"
        assert waiting["placement"]["lowest_ask"] == 5.0 and waiting["placement"]["budget"] == 0.5
        assert await balance(coordinator, consumer.user.id) == Decimal("9.5")

        job = await wait_for_job(http, consumer.key, job_id)
        assert job["status"] == "failed"
        assert job["error"].startswith("Unplaceable (price)") and "lowest ask" in job["error"]
        assert job["usage"]["credits_used"] == 0.0
        assert island.received == []
        assert await balance(coordinator, consumer.user.id) == Decimal(10)
        moves = await transactions_of(coordinator, uuid.UUID(job_id))
        assert moves == [("charge", Decimal("-0.5")), ("refund", Decimal("0.5"))]
        await assert_money_conserved(coordinator)
    finally:
        await island.stop()


@pytest.mark.parametrize("coordinator", [60.0], indirect=True)
async def test_a_terminal_status_frees_a_single_slot_at_once_despite_a_stale_heartbeat(
    coordinator: Runtime, http: httpx.AsyncClient, nats_url: str
) -> None:
    consumer = await make_consumer(coordinator)
    # The first job runs 3 s, so its heartbeat arrives while it runs even on a loaded machine.
    island = await start_island(coordinator, nats_url, max_concurrent=1, heartbeat_every=3600, delay=3.0)
    fleet = coordinator.fleet
    assert fleet is not None
    view = fleet.get(island.host_id)
    assert view is not None and view.max_concurrent == 1
    try:
        first = (await http.post("/api/v1/jobs", headers=py_headers(consumer.key), json=CHAT)).json()
        second = (await http.post("/api/v1/jobs", headers=py_headers(consumer.key), json=CHAT)).json()
        await eventually(lambda: _active(island, 1))
        running = island.heartbeat()  # built while the first job runs: active_jobs 1
        await island.publish("heartbeat", running)
        await eventually(lambda: _reported(view, 1))
        await eventually(lambda: _assigned_count(island, 1))
        # The first job succeeds; the heartbeat built before that arrives after it (different subject).
        await eventually(lambda: _done(http, consumer.key, first["data"]["id"]))
        await island.publish("heartbeat", running)
        # No fresh heartbeat will come (every 3600 s): only the terminal status can have freed the slot.
        job = await wait_for_job(http, consumer.key, second["data"]["id"])
        assert job["status"] == "completed" and len(island.received) == 2
    finally:
        await island.stop()


async def _active(island: FakeIsland, n: int) -> bool:
    return island.active == n


async def _reported(view: Any, n: int) -> bool:
    return bool(view.reported_active == n)


async def _assigned_count(island: FakeIsland, n: int) -> bool:
    return len(island.received) == n


async def _done(http: httpx.AsyncClient, key: str, job_id: str) -> bool:
    return (await get_job(http, key, job_id))["status"] == "completed"


async def test_the_cli_prints_only_the_reply_and_usage_counts_a_42_token_reply(
    coordinator: Runtime, http: httpx.AsyncClient, nats_url: str
) -> None:
    consumer = await make_consumer(coordinator)
    tokens = tuple(f"w{i} " for i in range(42))
    island = await start_island(coordinator, nats_url, chunks=tokens)
    try:
        created = (await http.post("/api/v1/jobs", headers=cli_headers(consumer.key), json=CHAT)).json()
        job_id = created["data"]["id"]
        cli_job(created["data"])
        # `aio jobs stream`: GET with the CLI's headers, print `content` of every parsed event.
        async with http.stream(
            "GET", f"/api/v1/jobs/{job_id}/stream", headers=cli_headers(consumer.key)
        ) as r:
            assert r.status_code == 200
            raw = "".join([chunk async for chunk in r.aiter_text()])
        events = sse_data(raw)
        printed = "".join(cli_stream_event(e) for e in events)
        assert printed == "".join(tokens)  # no "queued", "running", "completed" between the tokens
        statuses = [e["status"] for e in events if e["type"] == "status"]
        assert statuses[-1] == "completed" and "queued" in statuses
        done = events[-1]
        assert done["type"] == "done"
        usage = done["usage"]
        assert usage["completion_tokens"] == 42
        assert usage["prompt_tokens"] == 5  # "Hello there, Island": 19 characters, about 4 per token
        assert usage["total_tokens"] == 47 and usage["tokens_source"] == "counted"
        # Python `chat()`: ChatResult.usage is the polled Job's usage.
        job = await wait_for_job(http, consumer.key, job_id)
        cli_job(job)
        assert job["output"] == printed
        assert {k: job["usage"][k] for k in ("completion_tokens", "total_tokens")} == {
            "completion_tokens": 42,
            "total_tokens": 47,
        }
    finally:
        await island.stop()


async def test_402_says_how_much_is_needed_and_available(
    coordinator: Runtime, http: httpx.AsyncClient, nats_url: str
) -> None:
    consumer = await make_consumer(coordinator, credits=Decimal("0.25"))
    island = await start_island(coordinator, nats_url)
    try:
        response = await http.post("/api/v1/jobs", headers=py_headers(consumer.key), json=CHAT)
    finally:
        await island.stop()
    assert response.status_code == 402
    error = response.json()["error"]
    # Python: InsufficientCreditsError(error.message); the README prints required/available.
    assert error["code"] == "insufficient_credits" and "0.25" in error["message"]
    assert error["required"] == 1.0 and error["available"] == 0.25
    async with coordinator.db.session() as session:
        assert await session.scalar(text("SELECT count(*) FROM jobs")) == 0
    await assert_money_conserved(coordinator)


async def test_a_browser_preflight_with_the_ts_sdk_headers_is_allowed(http: httpx.AsyncClient) -> None:
    for method, path, headers in (
        ("POST", "/api/v1/jobs", "authorization,content-type,user-agent"),
        ("GET", "/api/v1/jobs/abc/stream", "accept,authorization"),
    ):
        response = await http.options(
            path,
            headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": headers,
            },
        )
        assert response.status_code == 200, response.text
        assert response.headers["access-control-allow-origin"] in ("*", "https://app.example.com")
        allowed = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
        assert set(headers.split(",")) <= allowed
        assert method in response.headers["access-control-allow-methods"]


async def test_models_and_network_stats(coordinator: Runtime, http: httpx.AsyncClient, nats_url: str) -> None:
    consumer = await make_consumer(coordinator)
    models = await http.get("/api/v1/models", headers=cli_headers(consumer.key))
    assert models.status_code == 200
    body = models.json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert "llm-chat" in ids and "sdxl" not in ids
    assert [m["id"] for m in body["data"] if m["default"]] == ["llm-chat"]
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in body["data"])
    assert (await http.get("/api/v1/models")).status_code == 401
    # Every listed id is a `model` /chat/completions accepts.
    chat = {"model": ids[0], "messages": [{"role": "user", "content": "hi"}], "stream": False}
    island = await start_island(coordinator, nats_url)
    try:
        answer = await http.post("/api/v1/chat/completions", headers=cli_headers(consumer.key), json=chat)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "Hello"

        coordinator.network_stats.clear()  # the cached aggregate of an earlier call

        async def stats() -> dict[str, Any] | None:
            coordinator.network_stats.clear()
            response = await http.get("/api/v1/network/stats")  # public: no key
            assert response.status_code == 200
            data: dict[str, Any] = response.json()["data"]
            return data if data["online_islands"] == 1 and data["jobs_completed"] == 1 else None

        data = await eventually(stats)
        assert data["regions"] == 0  # the fake Island registered no region
        # Served from the cached aggregate: repeated polls get the same answer.
        first = await http.get("/api/v1/network/stats")
        again = await http.get("/api/v1/network/stats")
        assert first.json() == again.json()
    finally:
        await island.stop()


async def test_a_batch_parent_reports_its_childrens_credits_and_a_start(
    coordinator: Runtime, http: httpx.AsyncClient, nats_url: str
) -> None:
    consumer = await make_consumer(coordinator)
    island = await start_island(coordinator, nats_url)
    try:
        await _post_asks(coordinator, island, {"llm-chat": "0.3"})
        body = {
            "workload": "llm-chat",
            "inputs": [{"prompt": "a"}, {"prompt": "b"}],
            "merge_strategy": "concat",
            "fail_mode": "best_effort",
        }
        response = await http.post("/api/v1/jobs/batch", headers=py_headers(consumer.key), json=body)
        assert response.status_code == 201, response.text
        parent_id = response.json()["id"]
        running = await get_job(http, consumer.key, parent_id)
        assert running["started_at"] is not None
        # Python `wait_for_batch` re-reads the parent as a Job.
        job = await wait_for_job(http, consumer.key, parent_id)
        assert job["status"] == "completed"
        assert job["usage"]["credits_used"] == 0.6
        assert job["started_at"] <= job["completed_at"]
        await assert_money_conserved(coordinator)
    finally:
        await island.stop()


def test_a_heartbeat_built_before_a_terminal_status_does_not_refill_the_slot() -> None:
    fleet = FleetView(heartbeat_timeout=30, clock=lambda: 100.0)
    view = HostView(id=uuid.uuid4(), approved=True, supported_runtimes=("container",))
    fleet.put(view)
    beat = FakeIsland("nats://unused", max_concurrent=1)
    beat.active = 1
    fleet.apply_heartbeat(view, parse_heartbeat(dumps(beat.heartbeat())))
    assert view.free_slots == 0
    assert fleet.reserve(view.id) is False
    fleet.release(view.id)  # the job's `succeeded`
    assert view.free_slots == 1
    fleet.apply_heartbeat(view, parse_heartbeat(dumps(beat.heartbeat())))  # stale: still says 1
    assert view.free_slots == 1
    fleet.apply_heartbeat(view, parse_heartbeat(dumps(beat.heartbeat())))  # a later one saying 1 is believed
    assert view.free_slots == 0
