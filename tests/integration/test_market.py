"""The exchange against PostgreSQL and over HTTP: budget resolution, asks, rates, snapshots, history, bids."""

from __future__ import annotations

import uuid
from decimal import Decimal

import httpx
from sqlalchemy import select, text

from coordinator.billing import exchange as market
from coordinator.runtime import Runtime
from coordinator.workloads.models import Workload
from tests.factories import make_consumer, seed_cargos


async def _host(
    runtime: Runtime,
    *,
    owner_id: int | None = None,
    gpu: str | None = None,
    vram: int | None = None,
    asks: str = "{}",
    status: str = "online",
    free: int = 1,
) -> uuid.UUID:
    host_id = uuid.uuid4()
    async with runtime.db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO hosts (id, owner_id, status, approved, gpu_model, gpu_vram_mb, asking_prices, "
                "supported_runtimes, max_concurrent) VALUES (:h, :o, :s, true, :g, :v, CAST(:a AS jsonb), "
                "'{container,wasm,onnx}', :m)"
            ),
            {"h": host_id, "o": owner_id, "s": status, "g": gpu, "v": vram, "a": asks, "m": free},
        )
    return host_id


async def _cargo(runtime: Runtime, slug: str = "llm-chat") -> Workload:
    async with runtime.db.session() as session:
        return (await session.execute(select(Workload).where(Workload.slug == slug))).scalar_one()


async def _succeeded_job(
    runtime: Runtime, user_id: int, workload_id: int, price: str, minutes_ago: int
) -> None:
    async with runtime.db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO jobs (id, user_id, workload_id, input, state, clearing_price, completed_at) "
                "VALUES (gen_random_uuid(), :u, :w, '{}'::jsonb, 'succeeded', :p, "
                "now() - make_interval(mins => :m))"
            ),
            {"u": user_id, "w": workload_id, "p": Decimal(price), "m": minutes_ago},
        )


async def test_budget_resolution_chain(runtime: Runtime) -> None:
    await seed_cargos(runtime)
    consumer = await make_consumer(runtime)
    cargo = await _cargo(runtime)  # base price 1
    uid = consumer.user.id
    async with runtime.db.session() as session:
        assert await market.resolve_budget(session, uid, cargo, None) == 1  # base price
    await _succeeded_job(runtime, uid, cargo.id, "2", 5)
    await _succeeded_job(runtime, uid, cargo.id, "4", 10)
    await _succeeded_job(runtime, uid, cargo.id, "100", 24 * 60)  # outside the window: ignored
    async with runtime.db.session() as session:
        assert await market.resolve_budget(session, uid, cargo, None) == Decimal("3.15")  # avg 3 × 1.05
    async with runtime.db.transaction() as session:
        await market.save_bid(session, uid, "llm-chat", Decimal("2.5"))
    async with runtime.db.session() as session:
        assert await market.resolve_budget(session, uid, cargo, None) == Decimal("2.5")  # saved bid
        assert await market.resolve_budget(session, uid, cargo, Decimal("7")) == 7  # the job's own


async def test_rates_are_public_and_priced_from_online_islands(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    await seed_cargos(runtime)
    await _host(runtime, gpu="NVIDIA GeForce RTX 4090", vram=24_576)  # tier: 1 × 2.0
    await _host(runtime, asks='{"llm-chat": "0.8", "_default": "3"}')
    await _host(runtime, gpu="RTX 3060", vram=12_288, status="offline")  # no supply
    r = await http.get("/api/v1/market/rates")
    assert r.status_code == 200
    by_slug = {rate["workload_slug"]: rate for rate in r.json()["data"]}
    chat = by_slug["llm-chat"]
    assert (chat["min_price"], chat["max_price"], chat["avg_price"], chat["num_hosts"]) == (0.8, 2.0, 1.4, 2)
    assert "timestamp" in chat
    r = await http.get("/api/v1/market/rates/sdxl")
    assert r.status_code == 200
    [sdxl] = r.json()["data"]  # a list even for one slug
    assert (sdxl["min_price"], sdxl["max_price"]) == (3.0, 10.0)  # _default ask; 5 × 2.0
    r = await http.get("/api/v1/market/rates/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_snapshots_feed_history(runtime: Runtime, http: httpx.AsyncClient) -> None:
    await seed_cargos(runtime)
    consumer = await make_consumer(runtime)
    cargo = await _cargo(runtime)
    await _host(runtime, asks='{"_default": "2"}')
    await _succeeded_job(runtime, consumer.user.id, cargo.id, "1.5", 1)
    async with runtime.db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO jobs (id, user_id, workload_id, input) "
                "VALUES (gen_random_uuid(), :u, :w, '{}'::jsonb)"
            ),
            {"u": consumer.user.id, "w": cargo.id},
        )
        written = await market.take_snapshots(session, surge=Decimal("1.25"))
        # an old snapshot, outside 1h but inside 24h
        await session.execute(
            text(
                "INSERT INTO market_snapshots (workload_id, supply, taken_at) "
                "VALUES (:w, 7, now() - interval '3 hours')"
            ),
            {"w": cargo.id},
        )
    assert written == 4
    r = await http.get("/api/v1/market/history/llm-chat?period=1h")
    assert r.status_code == 200
    [snap] = r.json()["data"]
    assert snap["workload_slug"] == "llm-chat"
    assert (snap["avg_price"], snap["num_hosts"], snap["demand"], snap["jobs_cleared"]) == (2.0, 1, 1, 1)
    assert snap["clearing_price"] == 1.5
    r = await http.get("/api/v1/market/history/sdxl?period=1h")
    assert r.json()["data"][0]["clearing_price"] == 2.5  # nothing cleared: cheapest ask × surge
    r = await http.get("/api/v1/market/history/llm-chat?period=24h")
    assert [s["num_hosts"] for s in r.json()["data"]] == [7, 1]
    r = await http.get("/api/v1/market/history/llm-chat?period=2y")
    assert r.status_code == 422 and "period" in r.json()["errors"]


async def test_saved_bids_over_http(runtime: Runtime, http: httpx.AsyncClient) -> None:
    await seed_cargos(runtime)
    consumer = await make_consumer(runtime)
    h = consumer.headers
    r = await http.put("/api/v1/market/bids", json={"workload": "sdxl", "bid": 4.5}, headers=h)
    assert r.status_code == 200 and r.json()["data"]["bid"] == 4.5
    r = await http.post("/api/v1/market/bids", json={"workload": "sdxl", "bid": "6"}, headers=h)
    assert r.status_code == 200
    r = await http.get("/api/v1/market/bids", headers=h)
    assert [(b["workload"], b["bid"]) for b in r.json()["data"]] == [("sdxl", 6.0)]
    r = await http.put("/api/v1/market/bids", json={"workload": "nope", "bid": 1}, headers=h)
    assert r.status_code == 422 and r.json()["errors"] == {"workload": ["unknown Cargo"]}
    r = await http.put("/api/v1/market/bids", json={"workload": "sdxl", "bid": -1}, headers=h)
    assert r.status_code == 422 and "bid" in r.json()["errors"]
    assert (await http.get("/api/v1/market/bids")).status_code == 401


async def test_only_the_owner_posts_asking_prices(runtime: Runtime, http: httpx.AsyncClient) -> None:
    await seed_cargos(runtime)
    owner = await make_consumer(runtime, "owner@example.com")
    other = await make_consumer(runtime, "other@example.com")
    reader = await make_consumer(runtime, "reader@example.com", scopes=["read"])
    host_id = await _host(runtime, owner_id=owner.user.id, asks='{"sdxl": "4"}')
    body = {"host_id": str(host_id), "prices": {"llm-chat": "0.75", "_default": 2}}
    r = await http.post("/api/v1/market/asking-prices", json=body, headers=owner.headers)
    assert r.status_code == 200
    assert r.json()["data"]["asking_prices"] == {"sdxl": "4", "llm-chat": "0.75", "_default": "2"}
    assert (
        await http.post("/api/v1/market/asking-prices", json=body, headers=other.headers)
    ).status_code == 403
    assert (
        await http.post("/api/v1/market/asking-prices", json=body, headers=reader.headers)
    ).status_code == 403
    bad = {"host_id": str(host_id), "prices": {"nope": "1", "sdxl": "x"}}
    r = await http.post("/api/v1/market/asking-prices", json=bad, headers=owner.headers)
    assert r.status_code == 422
    assert set(r.json()["errors"]) == {"prices.nope", "prices.sdxl"}
    missing = {"host_id": str(uuid.uuid4()), "prices": {"sdxl": "1"}}
    assert (
        await http.post("/api/v1/market/asking-prices", json=missing, headers=owner.headers)
    ).status_code == 404
    [rate] = (await http.get("/api/v1/market/rates/llm-chat")).json()["data"]
    assert rate["min_price"] == 0.75
