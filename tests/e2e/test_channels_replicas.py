"""Two replicas on one database and one NATS: a consumer's channel on replica A sees, once each and in
order, the output of a job whose phone Island is connected to replica B; A's dispatcher assigns it, and
the AssignJob reaches the phone through B (routed over NATS core to the replica holding the socket)."""

from __future__ import annotations

import httpx
from sqlalchemy import text

from tests.channel_islands import ChannelLink, heartbeat_payload, pair_device, register_payload, run_job
from tests.factories import make_consumer, seed_cargos
from tests.islands_support import running_coordinator
from tests.job_stack import eventually
from tests.job_support import job_row
from tests.phoenix_client import PhoenixClient

TOKENS = [f" t{i}" for i in range(10)]
FAST = {
    "output_flush_interval_seconds": 0.02,
    "lease_sweep_interval_seconds": 0.2,
}


async def test_a_consumer_on_replica_a_streams_a_job_run_by_a_phone_on_replica_b(
    database_url: str, nats_url: str
) -> None:
    async with (
        running_coordinator(database_url, nats_url, **FAST) as a,
        # B never dispatches (it claims nothing): the assignment must travel from A to B's socket.
        running_coordinator(database_url, nats_url, dispatch_batch_size=0, **FAST) as b,
    ):
        await seed_cargos(a)
        async with a.db.transaction() as session:
            await session.execute(text("UPDATE workloads SET cold_start_seconds = 0"))
        consumer = await make_consumer(a, "consumer@example.com")
        owner = await make_consumer(a, "owner@example.com")  # nobody is placed on their own Island
        async with httpx.AsyncClient(base_url=b.base_url, timeout=30) as http_b:
            phone = await ChannelLink(b.base_url, await pair_device(http_b, owner)).open()
        viewer = await PhoenixClient().start()
        try:
            await phone.send("register", register_payload(phone.host_id))
            await phone.send("heartbeat", heartbeat_payload(phone.host_id))

            async def a_knows_the_phone() -> bool:  # A hydrates its fleet view from the database
                view = a.fleet.get(phone.host_id)
                return view is not None and view.transport == "websocket" and view.status == "online"

            await eventually(a_knows_the_phone)
            async with httpx.AsyncClient(base_url=a.base_url, timeout=30) as http_a:
                response = await http_a.post(
                    "/api/v1/jobs",
                    headers=consumer.headers,
                    json={"workload": "llm-chat", "input": {"prompt": "Hi"}},
                )
            assert response.status_code == 201, response.text
            job_id = response.json()["data"]["id"]
            await viewer.connect(a.base_url, consumer.key)
            topic = f"job:{job_id}"
            assert (await viewer.join(topic))["ev"] == "join_ok"
            await run_job(phone, TOKENS)
            await viewer.wait_for(lambda e: e.get("event") == "done", within=20)
            events = [{"event": e["event"], **e["payload"]} for e in viewer.messages(topic)]
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # once each, in order
            assert [e["content"] for e in events if e["event"] == "token"] == TOKENS
            assert [e["event"] for e in events].count("done") == 1 and events[-1]["event"] == "done"
            row = await job_row(a, job_id)
            assert row.output == "".join(TOKENS) and row.host_id == phone.host_id
            assert row.stream_owner == a.pubsub.replica_id  # A assigned it
            assert all(r["status"] == "ok" for r in phone.replies)  # every report accepted on B
        finally:
            await viewer.close()
            await phone.close()
