"""Phone and browser Islands over `island:<host_id>` (the official phoenix client as the device): device
pairing and tokens, the same lifecycle as a NATS Island through the same intake, revocation, a socket
dropped mid-job, and mobile self-gating."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text

from coordinator.protocol.heartbeat import MobileState
from coordinator.runtime import Runtime
from tests.channel_islands import (
    ChannelLink,
    IslandLink,
    NatsLink,
    heartbeat_payload,
    now_ms,
    pair_device,
    register_payload,
    run_job,
)
from tests.factories import Consumer, make_consumer, seed_cargos
from tests.fake_island import FakeIsland
from tests.islands_support import running_coordinator
from tests.job_stack import eventually
from tests.job_support import host_row, job_row, karma_events
from tests.phoenix_client import PhoenixClient

CHAT = {"workload": "llm-chat", "input": {"prompt": "Hello"}}
TOKENS = ["Once", " upon", " a", " time"]


@pytest_asyncio.fixture
async def coordinator(database_url: str, nats_url: str) -> AsyncIterator[Runtime]:
    async with running_coordinator(
        database_url,
        nats_url,
        job_lease_seconds=3,
        lease_sweep_interval_seconds=0.2,
        output_flush_interval_seconds=0.02,
    ) as runtime:
        await seed_cargos(runtime)
        async with runtime.db.transaction() as session:
            await session.execute(text("UPDATE workloads SET cold_start_seconds = 0"))
        yield runtime


@pytest_asyncio.fixture
async def http(coordinator: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=coordinator.base_url, timeout=30) as client:
        yield client


@pytest_asyncio.fixture
async def owner(coordinator: Runtime) -> Consumer:
    return await make_consumer(coordinator, "owner@example.com")


async def submit(http: httpx.AsyncClient, consumer: Consumer) -> str:
    response = await http.post("/api/v1/jobs", headers=consumer.headers, json=CHAT)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["data"]["id"]
    return job_id


async def wait_state(runtime: Runtime, job_id: str, state: str) -> None:
    async def reached() -> bool:
        return (await job_row(runtime, job_id)).state == state

    await eventually(reached, within=20)


# ---------------------------------------------------------------- pairing and tokens


async def test_device_pairing_issues_one_token_listed_and_revocable_by_its_owner(
    coordinator: Runtime, http: httpx.AsyncClient, owner: Consumer
) -> None:
    started = (await http.post("/api/v1/devices/pairing", json={"platform": "ios"})).json()
    assert set(started) == {"code", "expires_in_seconds", "poll_token"}
    assert (await http.post("/api/v1/devices/token", json={"poll_token": "dp_unknown"})).status_code == 404
    await http.post("/api/v1/hosts/pair", headers=owner.headers, json={"code": started["code"]})
    issued = await http.post("/api/v1/devices/token", json={"poll_token": started["poll_token"]})
    assert issued.status_code == 200
    data = issued.json()
    assert data["device_token"].startswith("dt_")
    second = await http.post("/api/v1/devices/token", json={"poll_token": started["poll_token"]})
    assert second.status_code == 410 and second.json()["error"]["code"] == "gone"
    host = await host_row(coordinator, uuid.UUID(data["host_id"]))
    assert (host.owner_id, host.transport, host.platform) == (owner.user.id, "websocket", "ios")

    listed = (await http.get("/api/v1/devices", headers=owner.headers)).json()["data"]
    assert [(t["host_id"], t["revoked_at"]) for t in listed] == [(data["host_id"], None)]
    other = await make_consumer(coordinator, "other@example.com")
    assert (await http.get("/api/v1/devices", headers=other.headers)).json()["data"] == []
    token_id = listed[0]["id"]
    assert (await http.delete(f"/api/v1/devices/{token_id}", headers=other.headers)).status_code == 404
    revoked = await http.delete(f"/api/v1/devices/{token_id}", headers=owner.headers)
    assert revoked.status_code == 200 and revoked.json()["data"]["revoked_at"] is not None


async def test_an_expired_pairing_is_gone(coordinator: Runtime, http: httpx.AsyncClient) -> None:
    started = (await http.post("/api/v1/devices/pairing", json={})).json()
    async with coordinator.db.transaction() as session:
        await session.execute(text("UPDATE device_pairings SET expires_at = now() - interval '1 second'"))
    answer = await http.post("/api/v1/devices/token", json={"poll_token": started["poll_token"]})
    assert answer.status_code == 410


# ---------------------------------------------------------------- one lifecycle, both transports


async def open_link(transport: str, runtime: Runtime, http: httpx.AsyncClient, owner: Consumer) -> IslandLink:
    if transport == "nats":
        return await NatsLink(runtime.settings.nats_url or "").open()
    return await ChannelLink(runtime.base_url, await pair_device(http, owner)).open()


@pytest.mark.parametrize("transport", ["nats", "channel"])
async def test_the_same_island_lifecycle_holds_over_both_transports(
    transport: str, coordinator: Runtime, http: httpx.AsyncClient, owner: Consumer
) -> None:
    link = await open_link(transport, coordinator, http, owner)
    consumer = await make_consumer(coordinator, "consumer@example.com")
    try:
        await link.send("register", register_payload(link.host_id))
        await link.send("heartbeat", heartbeat_payload(link.host_id))

        async def beat_applied() -> bool:  # a NATS publish has no answer; a channel push has one
            view = coordinator.fleet.get(link.host_id)
            return view is not None and "container" in view.supported_runtimes

        await eventually(beat_applied)
        job_id = await submit(http, consumer)
        async with coordinator.db.transaction() as session:  # one more minute of work earns 1 karma
            await session.execute(
                text("UPDATE hosts SET pending_minutes = 59 WHERE id = :id"), {"id": link.host_id}
            )

        async def ran_two_minutes(job_id: str) -> None:
            async def started() -> bool:
                return (await job_row(coordinator, job_id)).state == "running"

            await eventually(started)
            async with coordinator.db.transaction() as session:
                await session.execute(
                    text("UPDATE jobs SET started_at = now() - interval '2 minutes' WHERE id = :id"),
                    {"id": job_id},
                )

        job = await run_job(link, TOKENS, ran_two_minutes)
        assert job["job_id"] == job_id
        await wait_state(coordinator, job_id, "succeeded")
        row = await job_row(coordinator, job_id)
        assert row.host_id == link.host_id
        assert row.output == "".join(TOKENS)  # every chunk, in seq order
        host = await host_row(coordinator, link.host_id)
        assert host.earnings_total > Decimal(0)  # paid
        assert [e for e, _ in await karma_events(coordinator, link.host_id)] == ["job_succeeded"]
        assert host.karma == 1  # gained karma

        # Impersonation: a report about a job not assigned to it is dropped and costs karma, on both
        # transports (the NATS check, here through the channel too).
        forged = str(uuid.uuid4())
        await link.send("output", {"job_id": forged, "seq": 1, "chunk": "forged", "is_final": False})

        async def penalised() -> bool:
            return any(e == "impersonation" for e, _ in await karma_events(coordinator, link.host_id))

        await eventually(penalised)
        assert (await host_row(coordinator, link.host_id)).karma < 1
        # A heartbeat naming another Island is refused (on the channel: with `invalid`).
        await link.send("heartbeat", heartbeat_payload(uuid.uuid4()))
        if isinstance(link, ChannelLink):
            assert link.replies[-1]["status"] == "error"
            assert link.replies[-1]["response"]["reason"] == "invalid"
            assert all(r["status"] == "ok" for r in link.replies[:-1])
    finally:
        await link.close()


async def test_malformed_island_pushes_are_refused_with_invalid_and_the_socket_stays(
    coordinator: Runtime, http: httpx.AsyncClient, owner: Consumer
) -> None:
    link = await ChannelLink(coordinator.base_url, await pair_device(http, owner)).open()
    try:
        for event, payload in [
            ("output", {"job_id": "x", "seq": "one", "chunk": "a"}),
            ("status", {"job_id": "x", "state": "exploded", "timestamp": 1}),
            ("heartbeat", {**heartbeat_payload(link.host_id), "battery_level": 400}),
            ("register", {"host_id": str(uuid.uuid4()), "capabilities": {}}),
        ]:
            await link.send(event, payload)
            assert link.replies[-1]["status"] == "error", (event, link.replies[-1])
            assert link.replies[-1]["response"]["reason"] == "invalid"
        await link.send("heartbeat", heartbeat_payload(link.host_id))
        assert link.replies[-1]["status"] == "ok"
    finally:
        await link.close()


async def test_an_island_channel_needs_that_islands_device_token(
    coordinator: Runtime, http: httpx.AsyncClient, owner: Consumer
) -> None:
    device = await pair_device(http, owner)
    client = await PhoenixClient().start()
    try:
        await client.connect(coordinator.base_url, device.token)
        assert (await client.join(f"island:{uuid.uuid4()}"))["response"] == {"reason": "forbidden"}
        assert (await client.join("job:00000000-0000-4000-8000-000000000000"))["response"] == {
            "reason": "unauthorized"
        }
    finally:
        await client.close()
    user = await PhoenixClient().start()
    try:
        await user.connect(coordinator.base_url, owner.key)
        assert (await user.join(f"island:{device.host_id}"))["response"] == {"reason": "forbidden"}
    finally:
        await user.close()


# ---------------------------------------------------------------- revocation, drops, self-gating


async def test_a_revoked_device_token_closes_the_socket_and_cannot_reconnect(
    coordinator: Runtime, http: httpx.AsyncClient, owner: Consumer
) -> None:
    device = await pair_device(http, owner)
    link = await ChannelLink(coordinator.base_url, device).open()
    try:
        (token,) = (await http.get("/api/v1/devices", headers=owner.headers)).json()["data"]
        assert (await http.delete(f"/api/v1/devices/{token['id']}", headers=owner.headers)).status_code == 200
        closed = await link.client.wait_for(lambda e: e["ev"] == "socket_close")
        assert closed["code"] == 4003 and closed["reason"] == "device token revoked"
    finally:
        await link.close()
    again = await PhoenixClient().start()
    try:
        refused = await again.connect(coordinator.base_url, device.token)
        assert refused["ev"] in ("socket_error", "socket_close")
        assert not [e for e in again.events if e["ev"] == "socket_open"]
    finally:
        await again.close()


async def test_a_socket_dropped_mid_job_loses_the_lease_and_the_job_runs_on_another_island(
    coordinator: Runtime, http: httpx.AsyncClient, owner: Consumer
) -> None:
    phone = await ChannelLink(coordinator.base_url, await pair_device(http, owner)).open()
    consumer = await make_consumer(coordinator, "consumer@example.com")
    await phone.send("register", register_payload(phone.host_id))
    await phone.send("heartbeat", heartbeat_payload(phone.host_id))
    job_id = await submit(http, consumer)
    job = await phone.next_assignment()
    assert job["job_id"] == job_id
    await phone.send("status", {"job_id": job_id, "state": "started", "timestamp": now_ms()})
    await phone.send("output", {"job_id": job_id, "seq": 1, "chunk": "half", "is_final": False})
    await phone.close()  # the phone vanishes mid-job: no more leases, no more heartbeats
    desktop = FakeIsland(
        coordinator.settings.nats_url or "", chunks=("all", " of", " it"), heartbeat_every=1.0
    )
    await desktop.start()
    try:
        await wait_state(coordinator, job_id, "succeeded")
        row = await job_row(coordinator, job_id)
        assert row.host_id == desktop.host_id
        assert str(phone.host_id) in (row.excluded_host_ids or [])
        assert row.attempt == 2
    finally:
        await desktop.stop()


async def test_a_phone_on_low_battery_takes_no_new_work_until_it_charges(
    coordinator: Runtime, http: httpx.AsyncClient, owner: Consumer
) -> None:
    phone = await ChannelLink(coordinator.base_url, await pair_device(http, owner)).open()
    consumer = await make_consumer(coordinator, "consumer@example.com")
    try:
        await phone.send("register", register_payload(phone.host_id))
        low = MobileState(battery_level=12, charging=False, thermal_state="nominal", network="wifi")
        await phone.send("heartbeat", heartbeat_payload(phone.host_id, low))
        assert phone.replies[-1]["status"] == "ok"
        fleet = coordinator.fleet
        view = fleet.get(phone.host_id)
        assert view is not None and view.self_gated and view.is_live(fleet.clock(), fleet.heartbeat_timeout)
        assert phone.host_id not in [h.id for h in coordinator.fleet.candidates()]
        job_id = await submit(http, consumer)
        assert (await job_row(coordinator, job_id)).state == "queued"
        charging = MobileState(battery_level=12, charging=True, thermal_state="nominal", network="wifi")
        await phone.send("heartbeat", heartbeat_payload(phone.host_id, charging))
        assert (await phone.next_assignment())["job_id"] == job_id  # charging: work again
    finally:
        await phone.close()


async def test_a_phone_that_re_joins_gets_its_still_assigned_job_again(
    coordinator: Runtime, http: httpx.AsyncClient, owner: Consumer
) -> None:
    device = await pair_device(http, owner)
    phone = await ChannelLink(coordinator.base_url, device).open()
    consumer = await make_consumer(coordinator, "consumer@example.com")
    try:
        await phone.send("register", register_payload(phone.host_id))
        await phone.send("heartbeat", heartbeat_payload(phone.host_id))
        job_id = await submit(http, consumer)
        assert (await phone.next_assignment())["job_id"] == job_id
    finally:
        await phone.close()  # gone before it started the job
    again = await ChannelLink(coordinator.base_url, device).open()
    watcher = await PhoenixClient().start()
    try:
        await watcher.connect(coordinator.base_url, owner.key)
        assert (await watcher.join(f"user:{owner.user.id}"))["ev"] == "join_ok"
        assert (await again.next_assignment())["job_id"] == job_id  # pushed again on join
        job = await run_job_started(again, job_id)
        assert job == job_id
        await wait_state(coordinator, job_id, "succeeded")
        await again.close()
        event = await watcher.wait_for(lambda e: e.get("event") == "island_updated")
        assert event["payload"] == {"id": str(device.host_id), "status": "disconnected"}
    finally:
        await again.close()
        await watcher.close()


async def run_job_started(link: ChannelLink, job_id: str) -> str:
    await link.send("status", {"job_id": job_id, "state": "started", "timestamp": now_ms()})
    await link.send("output", {"job_id": job_id, "seq": 1, "chunk": "hi", "is_final": False})
    await link.send("output", {"job_id": job_id, "seq": 2, "chunk": "", "is_final": True})
    await link.send("status", {"job_id": job_id, "state": "succeeded", "timestamp": now_ms()})
    return job_id
