"""`job:<id>` over `/socket/websocket`, driven by the official phoenix npm client (Node): replay then live
with `seq`, re-join with `after_seq`, ownership, cancel; and the user channel's account events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from tests.factories import make_consumer
from tests.phoenix_client import PhoenixClient
from tests.stream_support import Stack, finish, job_of, running_job, stream_stack


@pytest_asyncio.fixture
async def stack(database_url: str) -> AsyncIterator[Stack]:
    async with stream_stack(database_url) as s:
        yield s


@pytest_asyncio.fixture
async def client() -> AsyncIterator[PhoenixClient]:
    c = await PhoenixClient().start()
    try:
        yield c
    finally:
        await c.close()


def stream_of(client: PhoenixClient, topic: str) -> list[dict[str, Any]]:
    return [{"event": e["event"], **e["payload"]} for e in client.messages(topic)]


async def test_a_joined_job_streams_every_token_in_order_with_seq_and_ends_with_done(
    stack: Stack, client: PhoenixClient
) -> None:
    ref = await running_job(stack)
    await stack.accumulator.on_output(ref, 1, "Hel", False)
    await stack.accumulator.flush()  # one stored, the next only buffered: both replayed
    await stack.accumulator.on_output(ref, 2, "lo", False)
    assert (await client.connect(stack.runtime.base_url, stack.consumer.key))["ev"] == "socket_open"
    topic = f"job:{ref.job_id}"
    joined = await client.join(topic)
    assert joined["ev"] == "join_ok"
    assert joined["response"]["job"]["id"] == str(ref.job_id)
    assert joined["response"]["job"]["status"] == "running"
    await client.wait_for(lambda e: e.get("event") == "token" and e["payload"]["content"] == "lo")
    for i, token in enumerate([",", " wor", "ld"], start=3):  # live, after the replay
        await stack.accumulator.on_output(ref, i, token, False)
    await stack.accumulator.on_output(ref, 6, "", True)
    await finish(stack, ref)
    await client.wait_for(lambda e: e.get("event") == "done")
    events = stream_of(client, topic)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # gap-free, from 1
    assert events[-1]["event"] == "done"
    assert [e["event"] for e in events].count("done") == 1
    text = "".join(e["content"] for e in events if e["event"] == "token")
    assert text == "Hello, world"
    assert text == (await job_of(stack.runtime, ref.job_id)).output
    assert all(e["event"] == e["type"] for e in events)  # event name = the SSE payload's type


async def test_a_re_join_with_after_seq_gets_only_what_it_missed(stack: Stack, client: PhoenixClient) -> None:
    ref = await running_job(stack)
    for i, token in enumerate(["a", "b", "c", "d"], start=1):
        await stack.accumulator.on_output(ref, i, token, False)
    await stack.accumulator.on_output(ref, 5, "", True)
    await finish(stack, ref)
    await client.connect(stack.runtime.base_url, stack.consumer.key)
    topic = f"job:{ref.job_id}"
    await client.join(topic)
    done = await client.wait_for(lambda e: e.get("event") == "done")
    full = stream_of(client, topic)
    cut = next(e["seq"] for e in full if e["event"] == "token" and e["content"] == "b")
    await client.send("leave", topic=topic)
    await client.wait_for(lambda e: e["ev"] == "channel_close")
    before = len(client.events)
    rejoined = await client.join(topic, {"after_seq": cut})
    assert rejoined["ev"] == "join_ok"
    await client.wait_for(lambda e: e.get("event") == "done" and e is not done)
    again = [
        {"event": e["event"], **e["payload"]}
        for e in client.events[before:]
        if e["ev"] == "message" and e["topic"] == topic
    ]
    assert again == [e for e in full if e["seq"] > cut]
    assert [e["content"] for e in again if e["event"] == "token"] == ["c", "d"]


async def test_another_accounts_job_and_an_unknown_id_are_forbidden(
    stack: Stack, client: PhoenixClient
) -> None:
    ref = await running_job(stack)
    other = await make_consumer(stack.runtime, "other@example.com")
    await client.connect(stack.runtime.base_url, other.key)
    refused = await client.join(f"job:{ref.job_id}")
    assert refused["ev"] == "join_error"
    assert refused["response"] == {"reason": "forbidden"}
    unknown = await client.join("job:00000000-0000-4000-8000-000000000000")
    assert unknown["response"] == {"reason": "forbidden"}  # the same answer: ids cannot be probed
    assert client.messages(f"job:{ref.job_id}") == []


async def test_a_bad_token_is_refused_before_any_frame(stack: Stack, client: PhoenixClient) -> None:
    opened = await client.connect(stack.runtime.base_url, "ak_not-a-key")
    assert opened["ev"] in ("socket_error", "socket_close")
    assert not [e for e in client.events if e["ev"] == "socket_open"]


async def test_cancel_from_the_channel_cancels_the_job_and_streams_its_end(
    stack: Stack, client: PhoenixClient
) -> None:
    ref = await running_job(stack)
    await client.connect(stack.runtime.base_url, stack.consumer.key)
    topic = f"job:{ref.job_id}"
    await client.join(topic)
    reply = await client.push(topic, "cancel")
    assert reply["status"] == "ok" and reply["response"] == {"status": "cancelled"}
    await client.wait_for(lambda e: e.get("event") == "error")
    assert (await job_of(stack.runtime, ref.job_id)).state == "cancelled"
    again = await client.push(topic, "cancel")  # idempotent
    assert again["status"] == "ok" and again["response"] == {"status": "cancelled"}
    done = await running_job(stack)
    await stack.accumulator.on_output(done, 1, "", True)
    await finish(stack, done)
    await client.join(f"job:{done.job_id}")
    late = await client.push(f"job:{done.job_id}", "cancel")
    assert late["status"] == "error" and late["response"] == {
        "reason": "not_cancellable",
        "status": "completed",
    }
    assert (await job_of(stack.runtime, done.job_id)).state == "succeeded"


async def test_cancel_needs_the_write_scope(stack: Stack, client: PhoenixClient) -> None:
    reader = await make_consumer(stack.runtime, "reader@example.com", scopes=["read"])
    job = await running_job(stack)
    async with stack.runtime.db.transaction() as session:
        from sqlalchemy import text

        await session.execute(
            text("UPDATE jobs SET user_id = :u WHERE id = :id"), {"u": reader.user.id, "id": job.job_id}
        )
    await client.connect(stack.runtime.base_url, reader.key)
    topic = f"job:{job.job_id}"
    assert (await client.join(topic))["ev"] == "join_ok"
    reply = await client.push(topic, "cancel")
    assert reply["status"] == "error" and reply["response"] == {"reason": "forbidden"}
    assert (await job_of(stack.runtime, job.job_id)).state == "running"


async def test_the_user_channel_pushes_job_updates_and_credit_balances(
    stack: Stack, client: PhoenixClient
) -> None:
    await client.connect(stack.runtime.base_url, stack.consumer.key)
    topic = f"user:{stack.consumer.user.id}"
    assert (await client.join(topic))["ev"] == "join_ok"
    assert (await client.join(f"user:{stack.consumer.user.id + 1}"))["response"] == {"reason": "forbidden"}
    ref = await running_job(stack)  # submit (a charge), assign, start
    await finish(stack, ref, "failed", error="boom")  # a refund
    await client.wait_for(lambda e: e.get("event") == "job_updated" and e["payload"]["status"] == "failed")
    statuses = [e["payload"]["status"] for e in client.messages(topic, "job_updated")]
    assert statuses == ["pending", "queued", "running", "failed"]
    assert all(e["payload"]["id"] == str(ref.job_id) for e in client.messages(topic, "job_updated"))
    await client.wait_for(
        lambda e: e.get("event") == "credits" and len(client.messages(topic, "credits")) >= 2
    )
    from tests.job_support import balance

    balances = [e["payload"]["balance"] for e in client.messages(topic, "credits")]
    assert balances[0] < 10_000  # after the charge
    assert balances[-1] == float(await balance(stack.runtime, stack.consumer.user.id)) == 10_000  # refunded
    await asyncio.sleep(0)
