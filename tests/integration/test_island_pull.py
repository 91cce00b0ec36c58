"""The reference Island's continuous pull (island/pull.py) against a real JetStream: each job is handed over
the moment it is stored, however long the outstanding pull request still has to run, and the requests are
renewed so a burst larger than a batch and a message after a request expired are both delivered."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import nats
import pytest_asyncio
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from island.pull import ContinuousPull


@pytest_asyncio.fixture
async def consumer(nats_url: str) -> AsyncIterator[tuple[Client, str, str]]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    stream, subject = f"PULL_{uuid.uuid4().hex[:8]}", f"pull.{uuid.uuid4().hex[:8]}.jobs"
    await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
    await js.add_consumer(
        stream, ConsumerConfig(durable_name="host-x", filter_subject=subject, ack_policy=AckPolicy.EXPLICIT)
    )
    yield nc, stream, subject
    await js.delete_stream(stream)
    await nc.close()


async def _take(pull: ContinuousPull, count: int, into: list[bytes]) -> None:
    async for msg in pull.messages():
        await msg.ack()
        into.append(msg.data)
        if len(into) == count:
            return


async def test_a_job_published_while_a_pull_waits_is_handed_over_without_waiting_for_the_batch(
    consumer: tuple[Client, str, str],
) -> None:
    nc, stream, subject = consumer
    pull = ContinuousPull(nc, stream, "host-x", batch=50, expires=30.0)
    got: list[bytes] = []
    taker = asyncio.create_task(_take(pull, 1, got))
    await asyncio.sleep(0.3)  # the pull request is outstanding on the server now
    sent = time.monotonic()
    await nc.jetstream().publish(subject, b"job-1")
    await asyncio.wait_for(taker, 10)
    # nats-py's fetch(50, timeout=30) would have held it until 50 arrived or 30 s passed.
    assert got == [b"job-1"]
    assert time.monotonic() - sent < 5


async def test_a_burst_larger_than_a_batch_and_a_job_after_expiry_are_all_delivered(
    consumer: tuple[Client, str, str],
) -> None:
    nc, stream, subject = consumer
    js = nc.jetstream()
    for i in range(45):
        await js.publish(subject, f"burst-{i}".encode())
    pull = ContinuousPull(nc, stream, "host-x", batch=10, expires=1.0, idle_heartbeat=0.2)
    got: list[bytes] = []
    taker = asyncio.create_task(_take(pull, 46, got))
    deadline = time.monotonic() + 10
    while len(got) < 45 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert got == [f"burst-{i}".encode() for i in range(45)]
    await asyncio.sleep(2.5)  # every request made so far has expired on the server
    await js.publish(subject, b"late")
    await asyncio.wait_for(taker, 10)
    assert got[-1] == b"late"
