"""Chaos on a three-node NATS cluster (JetStream streams with three copies): the node the coordinator
and the Islands are connected to is killed mid-run; they reconnect to the others (the servers they
learnt from the cluster). Every job ends terminal, once charged, and none succeeds with less output
than its Island sent; after the failover the cluster takes and completes new work.

Jobs being dispatched during the failover can be dead-lettered (and refunded) — each AssignJob publish
that fails while the stream elects a new leader counts as an attempt — so the first wave is checked for
the invariants only; probe jobs then run one at a time until one succeeds (the failover is over), and
a second wave submitted after it must succeed in full."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import text

from tests.chaos_support import (
    NatsCluster,
    all_terminal,
    assert_invariants,
    chaos_stack,
    some_running,
    wait_until,
)
from tests.job_stack import eventually


async def test_chaos_nats_cluster_node_killed_mid_jobs(
    database_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    cluster = NatsCluster(tmp_path / "cluster")
    cluster.start()
    try:
        await cluster.ready()
        monkeypatch.setenv("COORDINATOR_NATS_STREAM_REPLICAS", "3")
        async with chaos_stack(database_url, cluster.url(0), tmp_path, monkeypatch) as chaos:
            accepted = await chaos.submit(24)
            assert len(accepted) == 24
            await wait_until(lambda: some_running(chaos.runtime))
            cluster.kill(0)
            await assert_invariants(chaos.runtime, accepted, min_succeeded=0)

            async def recovered() -> bool:  # one probe job at a time until the failover is over
                accepted.extend(probe := await chaos.submit(1))
                await all_terminal(chaos.runtime)
                async with chaos.runtime.db.session() as session:
                    state = await session.scalar(
                        text("SELECT state FROM jobs WHERE id = :id"), {"id": probe[0]}
                    )
                return state == "succeeded"

            await eventually(recovered, within=40, interval=0.5)
            first = await assert_invariants(chaos.runtime, accepted, min_succeeded=1)
            second = await chaos.submit(6)  # new work goes through the surviving nodes
            assert len(second) == 6
            await all_terminal(chaos.runtime)
            final = await assert_invariants(chaos.runtime, accepted + second, min_succeeded=6)
            assert final.get("succeeded", 0) - first.get("succeeded", 0) == len(second), (first, final)
    finally:
        cluster.stop()
