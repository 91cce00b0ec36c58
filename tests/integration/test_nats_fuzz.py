"""Fuzz: every Island-facing NATS handler takes random and adversarial bytes (deep nesting, huge numbers,
invalid UTF-8, near-8 MiB payloads, wrong shapes) and keeps processing the next good message."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.protocol import subjects
from coordinator.runtime import Runtime
from tests.factories import make_consumer, seed_cargos
from tests.fake_island import FakeIsland
from tests.islands_support import eventually, running_coordinator
from tests.job_support import make_island

ISLAND_SUFFIXES = ("heartbeat", "status", "output", "progress", "image", "lease", "ping")
SHARED = ("coordinator.hosts.register", "coordinator.hosts.pairing")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
PROTOCOL_KEYS = ("job_id", "state", "seq", "chunk", "host_id", "progress", "extend_seconds", "code")


def _deep(depth: int) -> bytes:
    return b'{"job_id":"x","state":' + b"[" * depth + b"]" * depth + b"}"


adversarial = st.one_of(
    st.binary(max_size=512),
    st.integers(1_000, 300_000).map(_deep),
    st.sampled_from([b"\xff\xfe\xfd", b'{"job_id":"\xed\xa0\x80"}', b"", b"null", b"[]", b'"str"']),
    st.dictionaries(st.sampled_from(PROTOCOL_KEYS), json_values, max_size=6).map(
        lambda d: json.dumps(d).encode()
    ),
    st.integers(min_value=10**20, max_value=10**400).map(
        lambda n: f'{{"job_id":"{uuid.uuid4()}","seq":{n},"state":"running","progress":{n}}}'.encode()
    ),
)


@pytest_asyncio.fixture
async def coordinator(database_url: str, nats_url: str) -> AsyncIterator[tuple[Runtime, FakeIsland, Any]]:
    async with running_coordinator(database_url, nats_url) as runtime:
        await seed_cargos(runtime)
        fleet = runtime.fleet
        island = FakeIsland(nats_url)
        await make_island(runtime, host_id=island.host_id, fleet=fleet)
        await island.start()
        nc = await nats.connect(nats_url)
        try:
            yield runtime, island, nc
        finally:
            await nc.close()
            await island.stop()


async def _pong(nc: Any, host: str) -> bool:
    reply = await nc.request(subjects.host_subject(host, "ping"), b"ping", timeout=5)
    return bool(reply.data == b"pong")


async def _status_consumer_drained(nc: Any) -> bool:
    """Both durable consumers (JOB_STATUS and JOB_OUTPUT) acknowledged everything they were given."""
    for stream, consumer in (
        (subjects.STATUS_STREAM, subjects.STATUS_CONSUMER),
        (subjects.OUTPUT_STREAM, subjects.OUTPUT_CONSUMER),
    ):
        info = await nc.jetstream().consumer_info(stream, consumer)
        if info.num_ack_pending or info.num_pending:
            return False
    return True


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(payloads=st.lists(adversarial, min_size=1, max_size=4))
async def test_handlers_survive_adversarial_payloads(
    coordinator: tuple[Runtime, FakeIsland, Any], payloads: list[bytes]
) -> None:
    _, island, nc = coordinator
    for payload in payloads:
        for host in (island.id, str(uuid.uuid4()), "not-a-uuid"):
            for suffix in ISLAND_SUFFIXES:
                await nc.publish(subjects.host_subject(host, suffix), payload)
        for subject in SHARED:
            await nc.publish(subject, payload)
    await nc.flush()
    # The host handler still answers, and the status consumer acknowledged everything it was given.
    assert await _pong(nc, island.id)
    await eventually(lambda: _status_consumer_drained(nc), within=15)


async def test_near_limit_payloads_and_then_a_whole_job(coordinator: tuple[Runtime, FakeIsland, Any]) -> None:
    runtime, island, nc = coordinator
    big = b'{"job_id":"' + b"a" * (nc.max_payload - 1024) + b'"}'
    for suffix in ISLAND_SUFFIXES:
        await nc.publish(subjects.host_subject(island.id, suffix), big)
    for subject in SHARED:
        await nc.publish(subject, big)
    await nc.flush()
    assert await _pong(nc, island.id)
    await eventually(lambda: _status_consumer_drained(nc), within=15)

    # After all of it, a job still runs end to end through every handler of the pipeline.
    consumer = await make_consumer(runtime)
    async with httpx.AsyncClient(base_url=runtime.base_url, timeout=30) as http:
        body = {"workload": "llm-chat", "input": {"prompt": "Hello"}}
        created = await http.post("/api/v1/jobs", json=body, headers=consumer.headers)
        assert created.status_code == 201, created.text
        job_id = created.json()["data"]["id"]

        async def completed() -> dict[str, Any] | None:
            job = (await http.get(f"/api/v1/jobs/{job_id}", headers=consumer.headers)).json()["data"]
            return job if job["status"] == "completed" else None

        job = await eventually(completed, within=15)
    assert job["output"] == "Hello"
