"""Conformance: byte-exact official-Island messages against the real coordinator (NATS + PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import pytest
import pytest_asyncio
from sqlalchemy import text

from coordinator.hosts import rules
from coordinator.runtime import Runtime
from coordinator.telemetry import metrics
from tests.factories import make_consumer
from tests.islands_support import eventually, running_coordinator

REGISTER_NO_GPU = (
    '{"host_id":"%s","capabilities":{"gpu_model":null,"gpu_vram_mb":null,"cpu_cores":8,"ram_mb":15935,'
    '"region":"auto"},"version":"0.4.0"}'
)
REGISTER_GPU = (
    '{"host_id":"%s","capabilities":{"gpu_model":"NVIDIA GeForce RTX 4090","gpu_vram_mb":24564,'
    '"cpu_cores":32,"ram_mb":64215,"region":"eu-west"},"version":"0.4.0"}'
)
HEARTBEAT_CPU = (
    '{"host_id":"%s","status":"online","active_jobs":1,"timestamp":1773916800123,"agent_version":"0.4.0",'
    '"system":{"cpu_percent":0.0,"memory_used_mb":6021,"memory_total_mb":15935,"disk_used_gb":112,'
    '"disk_total_gb":468},"cache":{"cached_image_count":3,"cached_size_mb":4211,"warm_workload_count":1,'
    '"warm_workload_ids":["42"]},"performance_estimates":{"gpu_bandwidth_gb_s":null,"estimated_llm_tok_s":null,'
    '"max_concurrent_containers":4,"wasm_memory_limit_mb":11951,"supported_runtimes":["container","wasm",'
    '"diffusers"],"nats_rtt_ms":0.412}}'
)
HEARTBEAT_GPU = (
    '{"host_id":"%s","status":"online","active_jobs":0,"timestamp":1773916810123,"agent_version":"0.4.0",'
    '"system":{"cpu_percent":0.0,"memory_used_mb":20480,"memory_total_mb":64215,"disk_used_gb":700,'
    '"disk_total_gb":1863},"gpus":[{"index":0,"utilization_percent":3,"memory_used_mb":512,'
    '"memory_total_mb":24564,"temperature_c":41,"power_draw_w":28.5}],"cache":{"cached_image_count":0,'
    '"cached_size_mb":0,"warm_workload_count":0,"warm_workload_ids":[]},"performance_estimates":'
    '{"gpu_bandwidth_gb_s":1008.0,"estimated_llm_tok_s":123.0,"max_concurrent_containers":16,'
    '"wasm_memory_limit_mb":48161,"supported_runtimes":["container","wasm","diffusers"],"nats_rtt_ms":12.5},'
    '"asking_prices":{"llm-chat":"2.0","_default":"1.0"}}'
)


@pytest_asyncio.fixture
async def coordinator(database_url: str, nats_url: str) -> AsyncIterator[Runtime]:
    async with running_coordinator(database_url, nats_url) as runtime:
        yield runtime


@pytest_asyncio.fixture
async def island_nc(nats_url: str) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_url, name="island-conformance")
    try:
        yield nc
    finally:
        await nc.close()


async def _host_row(runtime: Runtime, host_id: str) -> Any:
    async with runtime.db.session() as session:
        return (await session.execute(text("SELECT * FROM hosts WHERE id = :id"), {"id": host_id})).first()


@pytest.mark.parametrize("template", [REGISTER_NO_GPU, REGISTER_GPU])
async def test_register_upserts_the_host(coordinator: Runtime, island_nc: Any, template: str) -> None:
    host_id = str(uuid.uuid4())
    await island_nc.publish("coordinator.hosts.register", (template % host_id).encode())
    row = await eventually(lambda: _host_row(coordinator, host_id))
    assert row.status == "online" and row.approved  # approval is off in this stack
    assert row.agent_version == "0.4.0"
    if template is REGISTER_GPU:
        assert (row.gpu_model, row.gpu_vram_mb, row.cpu_cores, row.region) == (
            "NVIDIA GeForce RTX 4090",
            24564,
            32,
            "eu-west",
        )
    else:
        assert row.gpu_model is None and row.ram_mb == 15935
    fleet = coordinator.components["fleet"]
    assert fleet.get(uuid.UUID(host_id)) is not None


@pytest.mark.parametrize("template", [HEARTBEAT_CPU, HEARTBEAT_GPU])
async def test_heartbeat_from_unregistered_host_upserts_and_is_flushed(
    coordinator: Runtime, island_nc: Any, template: str
) -> None:
    host_id = str(uuid.uuid4())
    await island_nc.publish(f"host.{host_id}.heartbeat", (template % host_id).encode())

    async def flushed() -> Any:
        row = await _host_row(coordinator, host_id)
        return row if row is not None and row.last_heartbeat is not None else None

    row = await eventually(flushed)
    assert row.status == "online"
    assert row.supported_runtimes == ["container", "wasm", "diffusers"]
    view = coordinator.components["fleet"].get(uuid.UUID(host_id))
    if template is HEARTBEAT_GPU:
        assert row.max_concurrent == 16 and row.asking_prices == {"llm-chat": "2.0", "_default": "1.0"}
        assert str(view.asking_price("llm-chat")) == "2.0" and str(view.asking_price("sdxl")) == "1.0"
        assert row.rtt_ms == 12.5
    else:
        assert row.max_concurrent == 4 and row.active_jobs == 1 and row.warm_workload_ids == ["42"]
        assert view.warm_workload_ids == frozenset({"42"}) and view.reported_active == 1
    assert view in coordinator.components["fleet"].available()


async def test_pairing_code_claim_then_already_paired(
    coordinator: Runtime, island_nc: Any, http_for: Any
) -> None:
    host_id = str(uuid.uuid4())
    await island_nc.publish("coordinator.hosts.register", (REGISTER_NO_GPU % host_id).encode())
    request = f'{{"host_id":"{host_id}"}}'.encode()
    reply = json.loads((await island_nc.request("coordinator.hosts.pairing", request, timeout=10)).data)
    assert reply["success"] is True
    code = reply["code"]
    assert len(code) == 6 and all(c in rules.PAIRING_ALPHABET for c in code)
    assert not set(code) & set("IO10")
    assert 590 <= reply["expires_in_seconds"] <= 600
    again = json.loads((await island_nc.request("coordinator.hosts.pairing", request, timeout=10)).data)
    assert again["code"] == code  # still valid: the same code

    user = await make_consumer(coordinator, "owner@example.com")
    async with http_for(coordinator) as http:
        bad = await http.post("/api/v1/hosts/pair", json={"code": "ZZZZZZ"}, headers=user.headers)
        assert bad.status_code == 422 and "code" in bad.json()["errors"]
        claimed = await http.post("/api/v1/hosts/pair", json={"code": code.lower()}, headers=user.headers)
        assert claimed.status_code == 200, claimed.text
        assert claimed.json()["data"]["id"] == host_id
        assert claimed.json()["data"]["owner_id"] == str(user.user.id)
        reused = await http.post("/api/v1/hosts/pair", json={"code": code}, headers=user.headers)
        assert reused.status_code == 422

    paired = await island_nc.request("coordinator.hosts.pairing", request, timeout=10)
    assert paired.data == b'{"success":false,"error":"Island already paired"}'


async def test_expired_pairing_code_cannot_be_claimed(
    coordinator: Runtime, island_nc: Any, http_for: Any
) -> None:
    host_id = str(uuid.uuid4())
    request = f'{{"host_id":"{host_id}"}}'.encode()
    code = json.loads((await island_nc.request("coordinator.hosts.pairing", request, timeout=10)).data)[
        "code"
    ]
    async with coordinator.db.transaction() as session:
        await session.execute(
            text("UPDATE pairing_codes SET expires_at = now() - interval '1 second' WHERE code = :c"),
            {"c": code},
        )
    user = await make_consumer(coordinator, "late@example.com")
    async with http_for(coordinator) as http:
        late = await http.post("/api/v1/hosts/pair", json={"code": code}, headers=user.headers)
    assert late.status_code == 422
    fresh = json.loads((await island_nc.request("coordinator.hosts.pairing", request, timeout=10)).data)
    assert fresh["success"] and fresh["code"] != code


async def test_ping_is_answered_fast(coordinator: Runtime, island_nc: Any) -> None:
    host_id = str(uuid.uuid4())
    started = time.perf_counter()
    reply = await island_nc.request(f"host.{host_id}.ping", b"ping", timeout=5)
    assert reply.data == b"pong"
    assert time.perf_counter() - started < 0.5


async def test_probe_measures_rtt(coordinator: Runtime, island_nc: Any) -> None:
    host_id = str(uuid.uuid4())

    async def answer(msg: Any) -> None:
        await island_nc.publish(msg.reply, b"pong")

    await island_nc.subscribe(f"host.{host_id}.probe", cb=answer)
    await island_nc.flush()
    await island_nc.publish("coordinator.hosts.register", (REGISTER_NO_GPU % host_id).encode())
    view = await eventually(lambda: asyncio.sleep(0, coordinator.components["fleet"].get(uuid.UUID(host_id))))
    await eventually(lambda: asyncio.sleep(0, view.rtt_ms is not None))
    handler = coordinator.components["host_handler"]
    rtt = await handler.probe(host_id)
    assert rtt is not None and 0 < rtt < 1000
    assert await handler.probe(str(uuid.uuid4()), wait_seconds=0.2) is None


@pytest.mark.parametrize(
    ("subject", "klass"),
    [
        ("coordinator.hosts.register", "register"),
        ("coordinator.hosts.pairing", "pairing"),
        ("host.%s.heartbeat", "heartbeat"),
    ],
)
@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe garbage",
        b"[]",
        b'{"host_id":42}',
        b'{"host_id":"short"}',
        b'{"host_id":"a.b.c.d.e.f.g"}',
    ],
)
async def test_malformed_messages_are_counted_and_write_nothing(
    coordinator: Runtime, island_nc: Any, subject: str, klass: str, payload: bytes
) -> None:
    host_id = str(uuid.uuid4())
    before = metrics.nats_malformed.labels(klass)._value.get()
    subj = subject % host_id if "%s" in subject else subject
    if klass == "pairing":
        reply = await island_nc.request(subj, payload, timeout=5)  # answered, not left to time out
        assert json.loads(reply.data)["success"] is False
    else:
        await island_nc.publish(subj, payload)
    await eventually(lambda: asyncio.sleep(0, metrics.nats_malformed.labels(klass)._value.get() > before))
    async with coordinator.db.session() as session:
        count = (await session.execute(text("SELECT count(*) FROM hosts"))).scalar_one()
    assert count == 0
    reply = await island_nc.request(f"host.{host_id}.ping", b"ping", timeout=2)  # still alive
    assert reply.data == b"pong"


async def test_heartbeat_on_invalid_subject_id_is_refused(coordinator: Runtime, island_nc: Any) -> None:
    before = metrics.nats_malformed.labels("heartbeat")._value.get()
    await island_nc.publish("host.shortid.heartbeat", (HEARTBEAT_CPU % "shortid").encode())
    await eventually(
        lambda: asyncio.sleep(0, metrics.nats_malformed.labels("heartbeat")._value.get() > before)
    )
    async with coordinator.db.session() as session:
        assert (await session.execute(text("SELECT count(*) FROM hosts"))).scalar_one() == 0


@pytest.fixture
def http_for() -> Any:
    def make(runtime: Runtime) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=runtime.base_url, timeout=10)

    return make
