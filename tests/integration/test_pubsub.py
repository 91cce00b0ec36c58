"""Pub/sub: in-process fan-out and overflow, the NATS bridge between replicas, and SSE across replicas."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest
from prometheus_client import REGISTRY

from coordinator.pubsub import (
    PRESENCE_SUBJECT,
    SUBJECT_PREFIX,
    Event,
    PubSub,
    SubscriberOverflow,
    subject_topic,
    topic_subject,
)
from tests.factories import make_consumer
from tests.fake_island import FakeIsland
from tests.job_support import make_island
from tests.stream_support import (
    finish,
    job_of,
    parse_like_js,
    read_like_py,
    read_raw,
    running_job,
    stream_stack,
)


def json_of(msg: Any) -> Any:
    import json

    return json.loads(msg.data)


def event(n: int, topic: str = "job:x") -> Event:
    return Event.make(topic, n, {"type": "token", "content": str(n)})


async def test_every_subscriber_gets_every_event_in_order() -> None:
    hub = PubSub()
    subs = [hub.subscribe("job:x") for _ in range(3)]
    other = hub.subscribe("job:y")
    for n in range(1, 6):
        await hub.publish(event(n))
    for sub in subs:
        assert [(await sub.get(1)).position for _ in range(5)] == [1, 2, 3, 4, 5]  # type: ignore[union-attr]
    assert await other.get(0.05) is None


async def test_a_slow_subscriber_is_dropped_without_blocking_the_producer_or_the_others() -> None:
    hub = PubSub(queue_size=4)
    slow, fast = hub.subscribe("job:x"), hub.subscribe("job:x")
    received = []
    for n in range(1, 11):
        await hub.publish(event(n))  # never waits
        got = await fast.get(1)
        assert got is not None
        received.append(got.position)
    assert received == list(range(1, 11))
    assert slow.overflowed and hub.subscribers("job:x") == 1 and hub.overflows == 1
    # The slow one keeps what it had queued, then learns it must re-join by replay.
    assert [(await slow.get(1)).position for _ in range(4)] == [1, 2, 3, 4]  # type: ignore[union-attr]
    with pytest.raises(SubscriberOverflow):
        await slow.get(1)


def test_any_topic_maps_to_a_valid_subject_and_back() -> None:
    for topic in ("job:6f1d2c3b-0a9e", "a.b*c > d", "ünï"):
        subject = topic_subject(topic)
        assert " " not in subject and "*" not in subject.split(".", 2)[2] and ">" not in subject
        assert subject_topic(subject) == topic


async def test_bridge_delivers_remote_events_once_in_order_and_drops_own_echoes(nats_url: str) -> None:
    nc_a, nc_b = await nats.connect(nats_url), await nats.connect(nats_url)
    a, b = PubSub("replica-a"), PubSub("replica-b")
    subs = [await a.attach(nc_a), await b.attach(nc_b)]
    try:
        await heard(b, "replica-a")  # A answers B's hello at once
        on_a, on_b = a.subscribe("job:z"), b.subscribe("job:z")
        for n in range(1, 101):
            await b.publish(event(n, "job:z"))
        await nc_b.flush()
        got_a = [(await on_a.get(2)).position for _ in range(100)]  # type: ignore[union-attr]
        got_b = [(await on_b.get(2)).position for _ in range(100)]  # type: ignore[union-attr]
        assert got_a == got_b == list(range(1, 101))
        assert await on_a.get(0.2) is None and await on_b.get(0.2) is None  # no duplicates, no echo
        assert a.remote_received == 100 and b.remote_received == 0
    finally:
        for sub in subs:
            await sub.unsubscribe()
        await nc_a.close()
        await nc_b.close()


async def heard(hub: PubSub, replica: str, within: float = 2.0) -> None:
    for _ in range(int(within / 0.01)):
        if replica in hub.peers():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{hub.replica_id} never heard {replica}")


async def test_a_replica_alone_publishes_nothing_on_the_bridge_and_starts_when_another_says_hello(
    nats_url: str,
) -> None:
    """The bridge costs a publish per event only while another replica listens; the local subscribers get
    every event either way. A second replica's hello is answered at once, so each knows the other."""
    watcher = await nats.connect(nats_url)
    bridged = await watcher.subscribe(f"{SUBJECT_PREFIX}.>")
    await watcher.flush()
    nc_a, nc_b = await nats.connect(nats_url, no_echo=True), await nats.connect(nats_url, no_echo=True)
    a, b = PubSub("alone-a"), PubSub("alone-b")
    try:
        await a.attach(nc_a)
        local = a.subscribe("job:solo")
        for n in range(1, 11):
            await a.publish(event(n, "job:solo"))
        await nc_a.flush()
        assert [(await local.get(1)).position for _ in range(10)] == list(range(1, 11))  # type: ignore[union-attr]
        with pytest.raises(nats.errors.TimeoutError):
            await bridged.next_msg(0.3)
        assert a.peers() == set()

        await b.attach(nc_b)
        await heard(a, "alone-b")
        await heard(b, "alone-a")
        on_b = b.subscribe("job:solo")
        await a.publish(event(11, "job:solo"))
        assert (await on_b.get(2)).position == 11  # type: ignore[union-attr]
        assert json_of(await bridged.next_msg(2))["content"] == "11"
    finally:
        await nc_a.close()
        await nc_b.close()
        await watcher.close()


async def test_the_bridge_stops_when_the_other_replica_leaves_or_falls_silent(nats_url: str) -> None:
    watcher = await nats.connect(nats_url)
    bridged = await watcher.subscribe(f"{SUBJECT_PREFIX}.>")
    await watcher.flush()
    nc_a, nc_b = await nats.connect(nats_url, no_echo=True), await nats.connect(nats_url, no_echo=True)
    a, b = PubSub("left-a", peer_timeout=0.5), PubSub("left-b", peer_timeout=0.5)
    try:
        await a.attach(nc_a)
        await b.attach(nc_b)
        await heard(a, "left-b")
        await b.detach()  # says goodbye: A stops at once, well before B's silence would time out
        for _ in range(20):
            if not a.peers():
                break
            await asyncio.sleep(0.01)
        assert a.peers() == set()
        await a.publish(event(1, "job:gone"))
        with pytest.raises(nats.errors.TimeoutError):
            await bridged.next_msg(0.3)

        # A replica that beats, then falls silent (killed, cut off), is forgotten after the timeout.
        await watcher.publish(PRESENCE_SUBJECT, b'{"replica": "silent"}')
        await heard(a, "silent")
        await a.publish(event(2, "job:gone"))
        assert json_of(await bridged.next_msg(2))["content"] == "2"
        assert REGISTRY.get_sample_value("coordinator_pubsub_peer_replicas") == 1
        await asyncio.sleep(0.6)
        assert a.peers() == set()
        await a.beat()  # the next beat counts the replicas still heard
        assert REGISTRY.get_sample_value("coordinator_pubsub_peer_replicas") == 0
        await a.publish(event(3, "job:gone"))
        with pytest.raises(nats.errors.TimeoutError):
            await bridged.next_msg(0.3)
        # A malformed hello is ignored (logged and counted), and changes nothing.
        labels = {"subject_class": "pubsub"}
        before = REGISTRY.get_sample_value("coordinator_nats_malformed_messages_total", labels) or 0
        await watcher.publish(PRESENCE_SUBJECT, b"not json")
        await watcher.publish(PRESENCE_SUBJECT, b'{"no": "replica"}')
        await watcher.flush()
        await asyncio.sleep(0.1)
        assert a.peers() == set()
        assert REGISTRY.get_sample_value("coordinator_nats_malformed_messages_total", labels) == before + 2
    finally:
        await nc_a.close()
        await nc_b.close()
        await watcher.close()


async def test_a_dispatcher_wake_up_is_published_only_while_another_replica_is_there(nats_url: str) -> None:
    """Every submit and freed slot wakes the other replicas' dispatchers over NATS; alone, there is no
    one to wake (the replica woke its own dispatcher already)."""
    from coordinator.nats.job_bus import DISPATCH_WAKE, NatsJobBus

    watcher, nc, nc_bridge = await nats.connect(nats_url), await nats.connect(nats_url), None
    wakes = await watcher.subscribe(DISPATCH_WAKE)
    await watcher.flush()
    hub = PubSub("waker")
    bus = NatsJobBus(nc, "http://localhost", replica_id="waker", others_there=hub.listened)
    try:
        nc_bridge = await nats.connect(nats_url, no_echo=True)
        await hub.attach(nc_bridge)
        await bus.wake_dispatchers()
        await nc.flush()
        with pytest.raises(nats.errors.TimeoutError):
            await wakes.next_msg(0.3)
        await watcher.publish(PRESENCE_SUBJECT, b'{"replica": "worker-1"}')
        await heard(hub, "worker-1")
        await bus.wake_dispatchers()
        assert (await wakes.next_msg(2)).data == b"waker"
    finally:
        for conn in (nc, nc_bridge, watcher):
            if conn is not None:
                await conn.close()


async def test_a_replicas_bridge_connection_is_not_sent_its_own_events_back(
    database_url: str, nats_url: str
) -> None:
    """The bridge publishes and subscribes on a `no_echo` connection of its own: a token costs the replica
    one publish, not also a delivery of its own event that it would drop."""
    from coordinator.pubsub import PubSubChild

    async with stream_stack(database_url, nats_url=nats_url, seed=False) as stack:
        child = next(c for c in stack.children if isinstance(c, PubSubChild))
        for _ in range(100):
            if child._bridged is not None:
                break
            await asyncio.sleep(0.05)
        assert child._bridged is not None
        bridge, bridge_sub = child._bridged
        assert bridge is not stack.runtime.nats
        watcher = await nats.connect(nats_url)
        seen = await watcher.subscribe(topic_subject("job:echo"))
        await watcher.publish(PRESENCE_SUBJECT, b'{"replica": "watcher"}')  # another replica listens
        await watcher.flush()
        await heard(stack.runtime.pubsub, "watcher")
        for n in range(1, 21):
            await stack.runtime.pubsub.publish(event(n, "job:echo"))
        await bridge.flush()  # the server has routed all 20: an echo would be on its way before the PONG
        assert [int(json_of(await seen.next_msg(2))["content"]) for _ in range(20)] == list(range(1, 21))
        assert bridge_sub.delivered == 0
        await watcher.close()


async def test_a_consumer_on_replica_a_sees_the_stream_produced_on_replica_b(
    database_url: str, nats_url: str
) -> None:
    async with (
        stream_stack(database_url, nats_url=nats_url) as b,
        stream_stack(database_url, nats_url=nats_url, seed=False) as a,
    ):
        await asyncio.sleep(0.2)  # both bridges attached
        ref = await running_job(b)
        acc = b.accumulator
        await acc.on_output(ref, 1, "one ", False)
        await acc.flush()  # stored on B
        await acc.on_output(ref, 2, "two ", False)  # only in B's memory when A replays

        async def later() -> None:
            await asyncio.sleep(0.3)
            for seq, token in enumerate(["three ", "four"], start=3):
                await acc.on_output(ref, seq, token, False)
                await asyncio.sleep(0.05)
            await acc.on_output(ref, 5, "", True)
            await finish(b, ref)

        producer = asyncio.create_task(later())
        status, _, raw = await read_raw(a.http, f"/api/v1/jobs/{ref.job_id}/stream", b.consumer.headers)
        await producer
        assert status == 200
        events = parse_like_js(raw)
        tokens = [e["content"] for e in events if e["type"] == "token"]
        assert tokens == ["one ", "two ", "three ", "four"]
        assert [e["type"] for e in events][-2:] == ["status", "done"]
        assert [e["status"] for e in events if e["type"] == "status"] == ["queued", "running", "completed"]
        assert "".join(tokens) == (await job_of(a.runtime, ref.job_id)).output
        # And the Python SDK's reader on A, after the fact, gets the same stream from the store.
        assert await read_like_py(a.http, f"/api/v1/jobs/{ref.job_id}/stream", b.consumer.headers) == events


async def test_end_to_end_island_output_over_nats_reaches_the_sse_consumer(
    database_url: str, nats_url: str
) -> None:
    async with stream_stack(database_url, nats_url=nats_url, jobs_pipeline=True, seed=True) as stack:
        island = FakeIsland(nats_url, chunks=("Hel", "lo", " there"), delay=0.3)

        fleet = stack.runtime.fleet
        await make_island(stack.runtime, host_id=island.host_id, fleet=fleet)
        await island.start()
        fleet.notify_capacity()
        consumer = await make_consumer(stack.runtime, "e2e@example.com")
        try:
            response = await stack.http.post(
                "/api/v1/jobs",
                headers=consumer.headers,
                json={"workload": "llm-chat", "input": {"prompt": "Hi"}},
            )
            assert response.status_code == 201, response.text
            job_id = response.json()["data"]["id"]
            events: list[dict[str, Any]] = await read_like_py(
                stack.http, f"/api/v1/jobs/{job_id}/stream", consumer.headers
            )
        finally:
            await island.stop()
        assert "".join(e["content"] for e in events if e["type"] == "token") == "Hello there"
        assert events[-1]["type"] == "done"
        job = await stack.http.get(f"/api/v1/jobs/{job_id}", headers=consumer.headers)
        assert job.json()["data"]["output"] == "Hello there"
        assert job.json()["data"]["status"] == "completed"
