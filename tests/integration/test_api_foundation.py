"""The foundation REST endpoints, driven over real HTTP the way the official clients call them."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from coordinator.runtime import Runtime
from tests.factories import make_consumer, seed_cargos


async def test_account_returns_the_callers_account(runtime: Runtime, http: httpx.AsyncClient) -> None:
    consumer = await make_consumer(runtime, "alice@example.com")
    response = await http.get("/api/v1/account", headers=consumer.headers)
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["id"] == str(consumer.user.id)  # a string, as the Python SDK requires
    assert data["email"] == "alice@example.com"
    assert data["credits"] == 10000.0 and isinstance(data["credits"], float)
    assert data["created_at"].endswith("Z")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer ak_doesnotexist"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Basic Zm9vOmJhcg=="},
        {"Authorization": "Bearer"},
    ],
)
async def test_missing_or_bad_keys_get_401_in_the_error_envelope(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await http.get("/api/v1/account", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": {"code": "unauthorized", "message": "Invalid or missing API key"}}


async def test_a_read_only_key_cannot_write(runtime: Runtime, http: httpx.AsyncClient) -> None:
    consumer = await make_consumer(runtime, scopes=["read"])
    assert (await http.get("/api/v1/api-keys", headers=consumer.headers)).status_code == 200
    response = await http.post("/api/v1/api-keys", headers=consumer.headers, json={"name": "x"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


async def test_workloads_list_and_get(runtime: Runtime, http: httpx.AsyncClient) -> None:
    await seed_cargos(runtime)
    consumer = await make_consumer(runtime)
    listing = (await http.get("/api/v1/workloads", headers=consumer.headers)).json()["data"]
    slugs = {w["slug"] for w in listing}
    assert {"llm-chat", "sdxl", "text-stats", "sentiment"} <= slugs
    for workload in listing:
        # The Python SDK's enum accepts only these two; native runtimes are shown as container.
        assert workload["runtime_type"] in ("container", "wasm")
        assert isinstance(workload["id"], int)
        assert isinstance(workload["price_per_job"], float)
        assert workload["is_enabled"] is True
    sentiment = next(w for w in listing if w["slug"] == "sentiment")
    assert sentiment["runtime_type"] == "container" and sentiment["runtime"] == "onnx"

    one = await http.get("/api/v1/workloads/llm-chat", headers=consumer.headers)
    assert one.status_code == 200 and one.json()["data"]["slug"] == "llm-chat"
    missing = await http.get("/api/v1/workloads/nope", headers=consumer.headers)
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "not_found", "message": "Cargo not found"}}


async def test_api_key_lifecycle_serves_all_three_client_shapes(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    consumer = await make_consumer(runtime)
    created = await http.post("/api/v1/api-keys", headers=consumer.headers, json={"name": "laptop"})
    assert created.status_code in (200, 201)
    body = created.json()
    secret = body["key"]
    assert secret.startswith("ak_") and len(secret) >= 3 + 32
    # py: data + key; cli: data.api_key + data.key; js: data.data + data.key
    assert body["data"]["key"] == secret
    for record in (body["data"], body["data"]["api_key"], body["data"]["data"]):
        assert record["name"] == "laptop"
        assert record["prefix"] == secret[:8]
        assert isinstance(record["id"], str)
        assert record["created_at"].endswith("Z")

    listing = (await http.get("/api/v1/api-keys", headers=consumer.headers)).json()["data"]
    assert {k["name"] for k in listing} == {"test", "laptop"}
    assert all("key" not in k and secret not in str(k) for k in listing)

    new_headers = {"Authorization": f"Bearer {secret}"}
    assert (await http.get("/api/v1/account", headers=new_headers)).status_code == 200
    key_id = body["data"]["id"]
    deleted = await http.delete(f"/api/v1/api-keys/{key_id}", headers=consumer.headers)
    assert deleted.status_code == 200
    assert deleted.json() == {"data": {"id": key_id, "deleted": True}}
    # Revocation is immediate.
    assert (await http.get("/api/v1/account", headers=new_headers)).status_code == 401
    again = await http.delete(f"/api/v1/api-keys/{key_id}", headers=consumer.headers)
    assert again.status_code == 404


async def test_another_users_key_is_not_found(runtime: Runtime, http: httpx.AsyncClient) -> None:
    alice = await make_consumer(runtime, "alice@example.com")
    bob = await make_consumer(runtime, "bob@example.com")
    bobs_key = (await http.get("/api/v1/api-keys", headers=bob.headers)).json()["data"][0]["id"]
    response = await http.delete(f"/api/v1/api-keys/{bobs_key}", headers=alice.headers)
    assert response.status_code == 404
    assert (await http.get("/api/v1/account", headers=bob.headers)).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "content"),
    [
        ("POST", "/api/v1/api-keys", b"{not json"),
        ("POST", "/api/v1/api-keys", b"[]"),
        ("POST", "/api/v1/api-keys", b'{"name": ""}'),
        ("POST", "/api/v1/api-keys", b'{"name": 5}'),
        ("POST", "/api/v1/api-keys", b'{"name": "ok", "scopes": ["root"]}'),
        ("POST", "/api/v1/auth/magic-link", b'{"email": "not an email"}'),
        ("POST", "/api/v1/auth/magic-link", b"\xff\xfe"),
        ("POST", "/api/v1/auth/session", b'{"token": "unknown-token-xyz"}'),
        ("DELETE", "/api/v1/api-keys/not-a-uuid", None),
        ("GET", "/api/v1/workloads/%00", None),
        ("GET", "/api/v1/nowhere", None),
        ("PUT", "/api/v1/account", None),
        ("GET", "/api/v1/account/", None),
    ],
)
async def test_bad_input_gets_the_error_envelope(
    runtime: Runtime, http: httpx.AsyncClient, method: str, path: str, content: bytes | None
) -> None:
    consumer = await make_consumer(runtime)
    response = await http.request(method, path, headers=consumer.headers, content=content)
    assert 400 <= response.status_code < 500, response.text
    body = response.json()
    assert "detail" not in body
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
    if response.status_code == 422:
        assert isinstance(body["errors"], dict) and body["errors"]
        assert all(isinstance(v, list) for v in body["errors"].values())


async def test_cors_preflight_and_exposed_headers(http: httpx.AsyncClient) -> None:
    response = await http.options(
        "/api/v1/jobs",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] in ("*", "https://app.example")
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    simple = await http.get("/api/v1/health", headers={"Origin": "https://app.example"})
    assert "retry-after" in simple.headers["access-control-expose-headers"].lower()


async def test_health_endpoints(http: httpx.AsyncClient) -> None:
    assert (await http.get("/api/v1/health")).json()["data"]["status"] == "ok"
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok"}  # NATS is off in this runtime, so not checked


async def test_openapi_is_served_under_api_v1(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/api/v1/openapi.json")).json()
    assert "/api/v1/account" in spec["paths"]
    assert (await http.get("/api/v1/docs")).status_code == 200


async def test_an_idle_keep_alive_connection_outlives_the_clients_own_idle_limit(live_server: str) -> None:
    """httpx drops a pooled connection after 5 idle seconds, proxies after 60: the server must not close
    first, or the client's next request on that connection races the close and fails with a reset."""
    url = httpx.URL(live_server)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    request = f"GET /healthz HTTP/1.1\r\nHost: {url.host}\r\n\r\n".encode()

    async def exchange() -> bytes:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        fields = dict(line.lower().split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
        length = int(fields[b"content-length"])
        await reader.readexactly(length)
        return head

    try:
        assert (await exchange()).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(6)  # longer than uvicorn's own default (5 s), which raced httpx's
        assert not reader.at_eof()
        assert (await exchange()).startswith(b"HTTP/1.1 200")  # the same connection
    finally:
        writer.close()
