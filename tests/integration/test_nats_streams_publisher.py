"""JetStream set-up and the coordinator's publisher against a real nats-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest_asyncio
from nats.js.api import RetentionPolicy

from coordinator.nats.publisher import Publisher
from coordinator.nats.streams import ensure_streams, subscribe_status
from coordinator.protocol import messages as m
from coordinator.telemetry import metrics


@pytest_asyncio.fixture
async def nc(nats_url: str) -> AsyncIterator[Any]:
    client = await nats.connect(nats_url)
    await ensure_streams(client.jetstream())
    try:
        yield client
    finally:
        await client.drain()


def _job(job_id: str) -> m.AssignJob:
    return m.build_assign_job(
        job_id=job_id,
        workload_id=3,
        input={"text": "hi"},
        lease_expires_ms=1,
        workload_runtime="wasm",
        supported_runtimes=["container", "wasm"],
        sandbox_tier="standard",
        wasm_url="/cargos/text-stats.wasm",
    )


async def test_streams_exist_with_work_queue_retention(nc: Any) -> None:
    js = nc.jetstream()
    await ensure_streams(js)  # idempotent
    jobs = await js.stream_info("JOBS")
    assert jobs.config.retention == RetentionPolicy.WORK_QUEUE
    assert jobs.config.subjects == ["host.*.jobs"]
    status = await js.stream_info("JOB_STATUS")
    assert status.config.subjects == ["host.*.status"]


async def test_assignment_is_deduplicated_absolute_and_purgeable(nc: Any) -> None:
    host = str(uuid.uuid4())
    publisher = Publisher(nc, "http://coord.example:4000")
    job_id = str(uuid.uuid4())
    await publisher.publish_assignment(host, _job(job_id), msg_id=f"{job_id}:1")
    await publisher.publish_assignment(host, _job(job_id), msg_id=f"{job_id}:1")
    js = nc.jetstream()
    info = await js.stream_info("JOBS", subjects_filter=f"host.{host}.jobs")
    assert info.state.subjects == {f"host.{host}.jobs": 1}
    sub = await js.pull_subscribe(f"host.{host}.jobs", durable=f"host-{host}", stream="JOBS")
    [msg] = await sub.fetch(1, timeout=2)
    job = m.parse_assign_job(msg.data)
    assert job.wasm_url == "http://coord.example:4000/cargos/text-stats.wasm"
    assert job.job_id == job_id
    await publisher.publish_assignment(host, _job(str(uuid.uuid4())), msg_id="other")
    await publisher.purge_host_jobs(host)
    info = await js.stream_info("JOBS", subjects_filter=f"host.{host}.jobs")
    assert not info.state.subjects


async def test_cancel_and_preload_reach_the_island_subjects(nc: Any) -> None:
    host = str(uuid.uuid4())
    got: asyncio.Queue[Any] = asyncio.Queue()
    await nc.subscribe(f"host.{host}.cancel", cb=got.put)
    await nc.subscribe(f"host.{host}.preload", cb=got.put)
    publisher = Publisher(nc, "http://x")
    await publisher.publish_cancel(host, "job-1")
    await publisher.publish_preload(
        host, m.PreloadRecommendation(workload_slug="sdxl", runtime_type="container")
    )
    first = await asyncio.wait_for(got.get(), 2)
    second = await asyncio.wait_for(got.get(), 2)
    assert first.data == b'{"job_id":"job-1"}'
    assert m.parse_preload(second.data).workload_slug == "sdxl"


async def test_status_consumer_acks_malformed_and_delivers_valid(nc: Any) -> None:
    host = str(uuid.uuid4())
    seen: list[tuple[str, m.JobStatus]] = []

    async def handler(host_id: str, msg: Any) -> None:
        seen.append((host_id, m.parse_status(msg.data)))

    await nc.jetstream().purge_stream("JOB_STATUS")  # the session's NATS keeps other tests' reports
    before = metrics.nats_malformed.labels("status")._value.get()
    task = asyncio.create_task(subscribe_status(nc.jetstream(), handler, wait=0.2))
    await nc.publish(f"host.{host}.status", b"not json")
    await nc.publish(f"host.{host}.status", m.JobStatus("j1", "started", 5).encode())
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.05)
    task.cancel()
    assert seen == [(host, m.JobStatus("j1", "started", 5))]
    assert metrics.nats_malformed.labels("status")._value.get() == before + 1
    info = await nc.jetstream().consumer_info("JOB_STATUS", "coordinator-status")
    assert info.num_ack_pending == 0 and info.num_pending == 0
