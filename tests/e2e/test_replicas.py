"""Two full coordinator replicas on one database and one NATS: a job assigned by one streams over SSE
from the other, in order, each event once (issue 4); when the replica owning a job's stream stops
mid-job, the other takes the stream over and the job still streams and stores its whole output."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from sqlalchemy import text

from coordinator.jobs.dispatcher import ensure_fleet
from coordinator.jobs.output import stored_events
from coordinator.pubsub import pubsub_of
from tests.factories import make_consumer
from tests.fake_island import FakeIsland
from tests.job_stack import eventually
from tests.job_support import make_island
from tests.stream_support import job_of, parse_like_js, read_raw, stream_stack

TOKENS = ("Once", " upon", " a", " time", ",", " twice", ".")


async def test_a_consumer_on_one_replica_streams_a_job_whose_island_reports_to_the_other(
    database_url: str, nats_url: str
) -> None:
    async with (
        stream_stack(database_url, nats_url=nats_url, jobs_pipeline=True, seed=True) as a,
        stream_stack(database_url, nats_url=nats_url, jobs_pipeline=True, seed=False) as b,
    ):
        await asyncio.sleep(0.2)  # both pub/sub bridges attached
        island = FakeIsland(nats_url, chunks=TOKENS, delay=0.05)
        fleet = ensure_fleet(a.runtime)  # only replica A knows the Island: A assigns the job
        await make_island(a.runtime, host_id=island.host_id, fleet=fleet)
        await island.start()
        consumer = await make_consumer(a.runtime, "replicas@example.com")
        try:
            response = await a.http.post(
                "/api/v1/jobs",
                headers=consumer.headers,
                json={"workload": "llm-chat", "input": {"prompt": "Hi"}},
            )
            assert response.status_code == 201, response.text
            job_id = response.json()["data"]["id"]
            fleet.notify_capacity()
            status, _, raw = await read_raw(b.http, f"/api/v1/jobs/{job_id}/stream", consumer.headers)
        finally:
            await island.stop()
        assert status == 200
        events: list[dict[str, Any]] = parse_like_js(raw)
        tokens = [e["content"] for e in events if e["type"] == "token"]
        assert tokens == list(TOKENS)  # in order, each exactly once
        assert [e["type"] for e in events].count("done") == 1
        assert events[-1]["type"] == "done"
        assert [e["status"] for e in events if e["type"] == "status"] == ["queued", "running", "completed"]
        job = await job_of(b.runtime, job_id)
        assert job.output == "".join(TOKENS)
        # Every event position was stored once, contiguously (no replica wrote a second copy).
        await a.accumulator.flush()
        await b.accumulator.flush()
        async with a.runtime.db.session() as session:
            positions = (
                await session.scalars(
                    text("SELECT position FROM job_events WHERE job_id = :id ORDER BY position"),
                    {"id": job_id},
                )
            ).all()
        assert list(positions) == list(range(1, len(events) + 1))
        stored = [e.payload for e in await stored_events(a.runtime, uuid.UUID(job_id))]
        assert stored == events  # the store holds exactly the stream the consumer saw, one writer
        async with a.runtime.db.session() as session:
            owner = await session.scalar(text("SELECT stream_owner FROM jobs WHERE id = :id"), {"id": job_id})
        assert owner == pubsub_of(a.runtime.components).replica_id  # the assigning replica owns the stream


LONG = tuple(f" w{i}" for i in range(12))


async def test_the_other_replica_takes_a_stream_over_when_its_owner_stops_mid_job(
    database_url: str, nats_url: str
) -> None:
    replica_a = contextlib.AsyncExitStack()
    a = await replica_a.enter_async_context(
        stream_stack(database_url, nats_url=nats_url, jobs_pipeline=True, seed=True)
    )
    try:
        async with stream_stack(database_url, nats_url=nats_url, jobs_pipeline=True, seed=False) as b:
            await asyncio.sleep(0.2)  # both pub/sub bridges attached
            island = FakeIsland(nats_url, chunks=LONG, chunk_delay=0.15)
            fleet = ensure_fleet(a.runtime)  # A assigns the job, so A owns its stream
            await make_island(a.runtime, host_id=island.host_id, fleet=fleet)
            await island.start()
            consumer = await make_consumer(b.runtime, "takeover@example.com")
            try:
                body = {"workload": "llm-chat", "input": {"prompt": "Hi"}}
                response = await a.http.post("/api/v1/jobs", headers=consumer.headers, json=body)
                assert response.status_code == 201, response.text
                job_id = response.json()["data"]["id"]
                fleet.notify_capacity()
                url = f"/api/v1/jobs/{job_id}/stream"
                reader = asyncio.create_task(read_raw(b.http, url, consumer.headers))

                async def some_tokens_stored() -> bool:
                    events = await stored_events(b.runtime, uuid.UUID(job_id))
                    return sum(e.payload.get("type") == "token" for e in events) >= 3

                await eventually(some_tokens_stored)
                await replica_a.aclose()  # A stops mid-job: its NATS subscriptions and sink are gone
                stored = [e.payload for e in await stored_events(b.runtime, uuid.UUID(job_id))]
                assert "done" not in [e["type"] for e in stored]  # the job really was mid-stream
                status, _, raw = await asyncio.wait_for(reader, 30)
            finally:
                await island.stop()
            assert status == 200
            events: list[dict[str, Any]] = parse_like_js(raw)
            assert [e["content"] for e in events if e["type"] == "token"] == list(LONG)  # in order, once
            assert [e["type"] for e in events].count("done") == 1 and events[-1]["type"] == "done"
            assert (await job_of(b.runtime, job_id)).output == "".join(LONG)
            async with b.runtime.db.session() as session:
                owner = await session.scalar(
                    text("SELECT stream_owner FROM jobs WHERE id = :id"), {"id": job_id}
                )
            assert owner == pubsub_of(b.runtime.components).replica_id  # B took the stream over
    finally:
        await replica_a.aclose()
