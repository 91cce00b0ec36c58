"""The jobs REST endpoints, driven over real HTTP the way the official SDKs call them."""

from __future__ import annotations

import uuid
from decimal import Decimal

import httpx

from coordinator.runtime import Runtime
from tests.factories import make_consumer, seed_cargos
from tests.job_support import assert_money_conserved, balance, make_island, transactions_of

CHAT = {"workload": "llm-chat", "input": {"prompt": "Hello", "max_tokens": 16}}


async def test_submit_charges_the_budget_and_returns_a_pending_job(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    await seed_cargos(runtime)
    await make_island(runtime)
    consumer = await make_consumer(runtime)
    response = await http.post("/api/v1/jobs", headers=consumer.headers, json=CHAT)
    assert response.status_code == 201, response.text
    job = response.json()["data"]
    assert job["status"] == "pending"
    assert isinstance(job["workload_id"], int) and job["workload_slug"] == "llm-chat"
    assert job["input"] == CHAT["input"]
    assert job["created_at"].endswith("Z")
    assert job["usage"]["credits_used"] == 1.0
    assert job["queue_position"] == 1
    uuid.UUID(job["id"])
    assert await balance(runtime, consumer.user.id) == Decimal(9999)
    assert await transactions_of(runtime, uuid.UUID(job["id"])) == [("charge", Decimal(-1))]
    await assert_money_conserved(runtime)


async def test_submit_with_a_bid_charges_the_bid(runtime: Runtime, http: httpx.AsyncClient) -> None:
    await seed_cargos(runtime)
    await make_island(runtime)
    consumer = await make_consumer(runtime)
    response = await http.post("/api/v1/jobs", headers=consumer.headers, json={**CHAT, "budget": "2.5"})
    assert response.status_code == 201
    assert await balance(runtime, consumer.user.id) == Decimal("9997.5")


async def test_insufficient_credits_is_402_and_writes_nothing(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    await seed_cargos(runtime)
    await make_island(runtime)
    consumer = await make_consumer(runtime, credits=Decimal("0.5"))
    response = await http.post("/api/v1/jobs", headers=consumer.headers, json=CHAT)
    assert response.status_code == 402
    error = response.json()["error"]
    assert error["code"] == "insufficient_credits"
    assert "1" in error["message"] and "0.5" in error["message"]
    listing = (await http.get("/api/v1/jobs?limit=20&offset=0", headers=consumer.headers)).json()
    assert listing["data"] == [] and listing["meta"]["total"] == 0
    assert await balance(runtime, consumer.user.id) == Decimal("0.5")
    await assert_money_conserved(runtime)


async def test_unknown_cargo_is_404(runtime: Runtime, http: httpx.AsyncClient) -> None:
    await seed_cargos(runtime)
    consumer = await make_consumer(runtime)
    response = await http.post(
        "/api/v1/jobs", headers=consumer.headers, json={"workload": "nope", "input": {}}
    )
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "Cargo not found"}}


async def test_invalid_input_is_422_with_a_field_map(runtime: Runtime, http: httpx.AsyncClient) -> None:
    await seed_cargos(runtime)
    await make_island(runtime)
    consumer = await make_consumer(runtime)
    response = await http.post(
        "/api/v1/jobs", headers=consumer.headers, json={"workload": "sdxl", "input": {"width": 1024}}
    )
    assert response.status_code == 422
    assert response.json()["errors"] == {"input.prompt": ["is required"]}
    not_object = await http.post(
        "/api/v1/jobs", headers=consumer.headers, json={"workload": "llm-chat", "input": "hi"}
    )
    assert not_object.status_code == 422 and not_object.json()["errors"] == {"input": ["must be an object"]}
    bad_priority = await http.post("/api/v1/jobs", headers=consumer.headers, json={**CHAT, "priority": 101})
    assert bad_priority.status_code == 422 and "priority" in bad_priority.json()["errors"]
    bad_budget = await http.post("/api/v1/jobs", headers=consumer.headers, json={**CHAT, "budget": "-3"})
    assert bad_budget.status_code == 422 and "budget" in bad_budget.json()["errors"]
    missing = await http.post("/api/v1/jobs", headers=consumer.headers, json={"input": {}})
    assert missing.status_code == 422 and "workload" in missing.json()["errors"]
    assert await balance(runtime, consumer.user.id) == Decimal(10000)


async def test_a_job_no_island_could_ever_run_is_rejected_at_once(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    await seed_cargos(runtime)
    await make_island(runtime, vram_mb=None)  # CPU only: sdxl needs 6144 MB of VRAM
    await make_island(runtime, vram_mb=24576, status="suspended")
    consumer = await make_consumer(runtime)
    response = await http.post(
        "/api/v1/jobs", headers=consumer.headers, json={"workload": "sdxl", "input": {"prompt": "a cat"}}
    )
    assert response.status_code == 422
    body = response.json()
    assert "No registered Island" in body["error"]["message"] and "VRAM" in body["error"]["message"]
    assert "workload" in body["errors"]
    onnx = await http.post(
        "/api/v1/jobs", headers=consumer.headers, json={"workload": "sentiment", "input": {"text": "good"}}
    )
    assert onnx.status_code == 422 and "runtime onnx" in onnx.json()["error"]["message"]
    assert await balance(runtime, consumer.user.id) == Decimal(10000)


async def test_list_get_and_isolation_between_users(runtime: Runtime, http: httpx.AsyncClient) -> None:
    await seed_cargos(runtime)
    await make_island(runtime)
    alice = await make_consumer(runtime, "alice@example.com")
    bob = await make_consumer(runtime, "bob@example.com")
    ids = []
    for i in range(3):
        r = await http.post("/api/v1/jobs", headers=alice.headers, json={**CHAT, "priority": i})
        ids.append(r.json()["data"]["id"])
    listing = await http.get("/api/v1/jobs", params={"limit": 2, "offset": 0}, headers=alice.headers)
    assert listing.status_code == 200
    body = listing.json()
    assert [j["id"] for j in body["data"]] == [ids[2], ids[1]]
    assert body["meta"] == {"total": 3, "limit": 2, "offset": 0}
    page2 = (await http.get("/api/v1/jobs?limit=2&offset=2", headers=alice.headers)).json()
    assert [j["id"] for j in page2["data"]] == [ids[0]]
    one = await http.get(f"/api/v1/jobs/{ids[0]}", headers=alice.headers)
    assert one.status_code == 200 and one.json()["data"]["id"] == ids[0]
    # Another user's job, a malformed id and an unknown UUID are all a clean 404.
    for path in (f"/api/v1/jobs/{ids[0]}", "/api/v1/jobs/job_abc123", f"/api/v1/jobs/{uuid.uuid4()}"):
        r = await http.get(path, headers=bob.headers)
        assert r.status_code == 404 and r.json() == {
            "error": {"code": "not_found", "message": "Job not found"}
        }
    assert (await http.get("/api/v1/jobs", headers=bob.headers)).json()["data"] == []
    bad_limit = await http.get("/api/v1/jobs?limit=101&offset=0", headers=alice.headers)
    assert bad_limit.status_code == 422


async def test_cancel_refunds_in_full_and_is_idempotent(runtime: Runtime, http: httpx.AsyncClient) -> None:
    await seed_cargos(runtime)
    await make_island(runtime)
    consumer = await make_consumer(runtime)
    job_id = (await http.post("/api/v1/jobs", headers=consumer.headers, json=CHAT)).json()["data"]["id"]
    cancelled = await http.delete(f"/api/v1/jobs/{job_id}", headers=consumer.headers)
    assert cancelled.status_code == 200
    data = cancelled.json()["data"]
    assert data["status"] == "cancelled" and data["usage"]["credits_used"] == 0.0
    assert await balance(runtime, consumer.user.id) == Decimal(10000)
    again = await http.delete(f"/api/v1/jobs/{job_id}", headers=consumer.headers)
    assert again.status_code == 200 and again.json()["data"]["status"] == "cancelled"
    assert await transactions_of(runtime, uuid.UUID(job_id)) == [
        ("charge", Decimal(-1)),
        ("refund", Decimal(1)),
    ]
    other = await make_consumer(runtime, "other@example.com")
    assert (await http.delete(f"/api/v1/jobs/{job_id}", headers=other.headers)).status_code == 404
    output = await http.get(f"/api/v1/jobs/{job_id}/output", headers=consumer.headers)
    assert output.status_code == 200 and output.json()["data"]["status"] == "cancelled"
    await assert_money_conserved(runtime)
