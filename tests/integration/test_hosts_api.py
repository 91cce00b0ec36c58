"""Island lifecycle (offline detection, approval, suspension) and the hosts, admin and Island endpoints."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import nats
import wasmtime
from sqlalchemy import text

from coordinator.protocol import messages as m
from coordinator.runtime import Runtime
from tests.factories import make_consumer, seed_cargos
from tests.fake_island import FakeIsland
from tests.islands_support import eventually, running_coordinator
from tests.job_stack import CHAT


def _beat(host_id: str, **perf: Any) -> bytes:
    return m.Heartbeat(
        host_id=host_id,
        timestamp=1,
        performance_estimates=m.PerformanceEstimates(max_concurrent_containers=2, **perf),
    ).encode()


async def _status(runtime: Runtime, host_id: str) -> str | None:
    async with runtime.db.session() as session:
        return (
            await session.execute(text("SELECT status FROM hosts WHERE id = :id"), {"id": host_id})
        ).scalar_one_or_none()


async def _status_is(runtime: Runtime, host_id: str, expected: str) -> bool:
    return await _status(runtime, host_id) == expected


async def _job(runtime: Runtime, job_id: str) -> Any:
    async with runtime.db.session() as session:
        return (
            await session.execute(
                text("SELECT state, host_id, placement FROM jobs WHERE id = :id"), {"id": job_id}
            )
        ).one()


async def test_silent_island_goes_offline_and_gets_no_work(database_url: str, nats_url: str) -> None:
    async with running_coordinator(database_url, nats_url, heartbeat_timeout_seconds=1) as runtime:
        await seed_cargos(runtime)
        consumer = await make_consumer(runtime)
        island = FakeIsland(nats_url)  # consumes its job subject; beats only when the test says so
        await island.start()
        try:
            await island.publish("heartbeat", island.heartbeat())
            assert await eventually(lambda: _status(runtime, island.id)) == "online"
            # silence: offline in the database within the (1 s) timeout + one sweep
            await eventually(lambda: _status_is(runtime, island.id, "offline"), within=4)

            async with httpx.AsyncClient(base_url=runtime.base_url) as http:
                created = await http.post("/api/v1/jobs", headers=consumer.headers, json=CHAT)
                assert created.status_code == 201, created.text
                job_id = created.json()["data"]["id"]
                # The dispatcher has looked at the job (it recorded why it waits) and left it queued:
                # the only Island is offline, so no AssignJob reached it.
                job = await eventually(lambda: _placed_or_waiting(runtime, job_id))
                assert (job.state, job.host_id) == ("queued", None), job
                assert job.placement["reason"], job.placement
                assert island.received == []

                # A new heartbeat brings it back, and the same job now reaches it through the same path.
                await island.publish("heartbeat", island.heartbeat())
                await eventually(lambda: asyncio.sleep(0, bool(island.received)))
                assert [j["job_id"] for j in island.received] == [job_id]
                assert str((await _job(runtime, job_id)).host_id) == island.id
        finally:
            await island.stop()


async def _placed_or_waiting(runtime: Runtime, job_id: str) -> Any:
    job = await _job(runtime, job_id)
    return job if job.host_id is not None or job.placement is not None else None


async def test_approval_suspension_and_resumption(database_url: str, nats_url: str) -> None:
    async with running_coordinator(database_url, nats_url, require_host_approval=True) as runtime:
        fleet = runtime.components["fleet"]
        admin = await make_consumer(runtime, "admin@example.com", admin=True)
        user = await make_consumer(runtime, "user@example.com")
        host_id = str(uuid.uuid4())
        nc = await nats.connect(nats_url)
        try:
            await nc.publish(f"host.{host_id}.heartbeat", _beat(host_id))
            assert await eventually(lambda: _status(runtime, host_id)) == "pending_approval"
            view = fleet.get(uuid.UUID(host_id))
            assert view is not None and view not in fleet.available()
            async with httpx.AsyncClient(base_url=runtime.base_url) as http:
                for action in ("approve", "suspend", "resume"):
                    denied = await http.post(f"/api/v1/admin/hosts/{host_id}/{action}", headers=user.headers)
                    assert denied.status_code == 403
                    assert denied.json()["error"]["code"] == "forbidden"
                assert (await http.get("/api/v1/admin/hosts", headers=user.headers)).status_code == 403
                listed = await http.get("/api/v1/admin/hosts?status=pending_approval", headers=admin.headers)
                assert [h["id"] for h in listed.json()["data"]] == [host_id]

                approved = await http.post(f"/api/v1/admin/hosts/{host_id}/approve", headers=admin.headers)
                assert approved.status_code == 200 and approved.json()["data"]["approved"] is True
                assert view in fleet.available()  # live and approved: work at once
                await nc.publish(f"host.{host_id}.heartbeat", _beat(host_id))
                await eventually(lambda: _status_is(runtime, host_id, "online"))

                suspended = await http.post(
                    f"/api/v1/admin/hosts/{host_id}/suspend", json={"reason": "abuse"}, headers=admin.headers
                )
                assert suspended.json()["data"]["status"] == "suspended"
                assert view not in fleet.available()
                # Beating changes nothing: once this beat is stored (its time is newer), still suspended.
                seen = await _last_heartbeat_at(runtime, host_id)
                await nc.publish(f"host.{host_id}.heartbeat", _beat(host_id))
                await eventually(lambda: _beat_stored_after(runtime, host_id, seen))
                assert await _status(runtime, host_id) == "suspended" and view not in fleet.available()

                resumed = await http.post(f"/api/v1/admin/hosts/{host_id}/resume", headers=admin.headers)
                assert resumed.json()["data"]["status"] == "offline"
                assert view in fleet.available()
                missing = await http.post(
                    f"/api/v1/admin/hosts/{uuid.uuid4()}/approve", headers=admin.headers
                )
                assert missing.status_code == 404
        finally:
            await nc.close()


async def _last_heartbeat_at(runtime: Runtime, host_id: str) -> Any:
    async with runtime.db.session() as session:
        return (
            await session.execute(text("SELECT last_heartbeat_at FROM hosts WHERE id = :id"), {"id": host_id})
        ).scalar_one()


async def _beat_stored_after(runtime: Runtime, host_id: str, seen: Any) -> bool:
    return bool(await _last_heartbeat_at(runtime, host_id) > seen)


async def _insert_host(runtime: Runtime, status: str, approved: bool, owner_id: int | None = None) -> str:
    host_id = str(uuid.uuid4())
    async with runtime.db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO hosts (id, status, approved, owner_id, region, karma, last_heartbeat_at) "
                "VALUES (:id, :s, :a, :o, 'eu-west', 7, now())"
            ),
            {"id": host_id, "s": status, "a": approved, "o": owner_id},
        )
    return host_id


async def test_hosts_list_and_detail(runtime: Runtime, http: httpx.AsyncClient) -> None:
    viewer = await make_consumer(runtime, "viewer@example.com", scopes=["read"])
    owner = await make_consumer(runtime, "owner@example.com")
    public = await _insert_host(runtime, "online", True)
    pending = await _insert_host(runtime, "pending_approval", False)
    owned_offline = await _insert_host(runtime, "offline", True, owner_id=owner.user.id)

    listed = await http.get("/api/v1/hosts", headers=viewer.headers)
    assert listed.status_code == 200
    [host] = listed.json()["data"]
    assert host["id"] == public and host["status"] == "online" and host["region"] == "eu-west"
    assert host["karma_score"] == 7.0 and host["last_heartbeat_at"].endswith("Z")
    assert isinstance(host["capabilities"], dict)
    assert "asking_prices" not in host and "owner_id" not in host  # owner-only details hidden

    mine = await http.get("/api/v1/hosts", headers=owner.headers)
    assert {h["id"] for h in mine.json()["data"]} == {public, owned_offline}
    detail = await http.get(f"/api/v1/hosts/{owned_offline}", headers=owner.headers)
    assert detail.json()["data"]["owner_id"] == str(owner.user.id)
    assert (await http.get(f"/api/v1/hosts/{pending}", headers=viewer.headers)).status_code == 404
    assert (await http.get(f"/api/v1/hosts/{public}", headers=viewer.headers)).status_code == 200
    assert (await http.get("/api/v1/hosts/not-a-uuid", headers=viewer.headers)).status_code == 404
    assert (await http.get("/api/v1/hosts")).status_code == 401
    write_only = await make_consumer(runtime, "w@example.com", scopes=["read"])
    denied = await http.post("/api/v1/hosts/pair", json={"code": "ABCDEF"}, headers=write_only.headers)
    assert denied.status_code == 403
    invalid = await http.post("/api/v1/hosts/pair", json={}, headers=owner.headers)
    assert invalid.status_code == 422 and "code" in invalid.json()["errors"]


async def test_agent_update(runtime: Runtime, http: httpx.AsyncClient) -> None:
    plain = await http.get("/api/v1/agent/update?version=0.4.0&platform=linux-x86_64&host_id=x")
    assert plain.json() == {"update_available": False, "current_version": "0.4.0"}
    runtime.settings.agent_release = {
        "latest_version": "0.5.0",
        "download_url": "https://example/island-0.5.0",
        "signature": "ab" * 64,
        "checksum_sha256": "cd" * 32,
        "size_bytes": 123,
    }
    newer = (await http.get("/api/v1/agent/update?version=0.4.0")).json()
    assert newer["update_available"] is True and newer["latest_version"] == "0.5.0"
    assert newer["current_version"] == "0.4.0" and len(newer["signature"]) == 128
    current = (await http.get("/api/v1/agent/update?version=0.5.0")).json()
    assert current == {"update_available": False, "current_version": "0.5.0"}


async def test_signing_keys(runtime: Runtime, http: httpx.AsyncClient) -> None:
    assert (await http.get("/api/v1/signing-keys")).json() == []
    key = {"key_id": "k1", "public_key": "-----BEGIN PUBLIC KEY-----\n", "algorithm": "ecdsa-p256"}
    runtime.settings.signing_keys = [key]
    assert (await http.get("/api/v1/signing-keys")).json() == [key]


async def test_recommendations_follow_queued_demand(runtime: Runtime, http: httpx.AsyncClient) -> None:
    assert (await http.get("/api/v1/island/recommendations?host_id=x")).json() == {"recommendations": []}
    await seed_cargos(runtime)
    user = await make_consumer(runtime, "demand@example.com")
    async with runtime.db.transaction() as session:
        for slug, n in (("llm-chat", 4), ("sentiment", 1)):
            await session.execute(
                text(
                    "INSERT INTO jobs (id, user_id, workload_id, state, input) "
                    "SELECT gen_random_uuid(), :u, id, 'queued', '{}' "
                    "FROM workloads, generate_series(1, :n) WHERE slug = :s"
                ),
                {"u": user.user.id, "n": n, "s": slug},
            )
    recs = (await http.get(f"/api/v1/island/recommendations?host_id={uuid.uuid4()}")).json()[
        "recommendations"
    ]
    assert [r["workload_slug"] for r in recs] == ["llm-chat", "sentiment"]
    first = recs[0]
    assert (
        first["queued_demand"] == 4 and first["priority"] == "medium" and first["runtime_type"] == "container"
    )
    assert isinstance(first["estimated_earnings_per_job"], str)
    for rec in recs:  # every element parses as the Island parses it
        m.parse_preload(m.dumps(rec))


async def test_text_stats_wasm_is_served_and_runs(http: httpx.AsyncClient) -> None:
    response = await http.get("/cargos/text-stats.wasm")
    assert response.status_code == 200 and response.content[:4] == b"\x00asm"
    wasmtime.Module(wasmtime.Engine(), response.content)  # a valid module


async def test_decisions_from_another_replica_reach_the_fleet_view(database_url: str, nats_url: str) -> None:
    async with running_coordinator(
        database_url, nats_url, require_host_approval=True, heartbeat_timeout_seconds=3
    ) as runtime:
        fleet = runtime.components["fleet"]
        host_id = str(uuid.uuid4())
        nc = await nats.connect(nats_url)

        async def beat_forever() -> None:
            while True:
                await nc.publish(f"host.{host_id}.heartbeat", _beat(host_id))
                await asyncio.sleep(0.3)

        beating = asyncio.create_task(beat_forever())
        try:
            view = await eventually(lambda: asyncio.sleep(0, fleet.get(uuid.UUID(host_id))))
            assert view not in fleet.available()
            # another replica approves (a plain SQL write here), then suspends
            async with runtime.db.transaction() as session:
                await session.execute(
                    text(
                        "UPDATE hosts SET approved = true, status = 'offline', updated_at = now() "
                        "WHERE id = :id"
                    ),
                    {"id": host_id},
                )
            await eventually(lambda: asyncio.sleep(0, view in fleet.available()), within=4)
            async with runtime.db.transaction() as session:
                await session.execute(
                    text("UPDATE hosts SET status = 'suspended', updated_at = now() WHERE id = :id"),
                    {"id": host_id},
                )
            await eventually(lambda: asyncio.sleep(0, view.status == "suspended"), within=4)
            assert view not in fleet.available()
        finally:
            beating.cancel()
            await nc.close()
