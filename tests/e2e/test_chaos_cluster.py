"""Chaos on a three-node NATS cluster (JetStream streams with three copies): the node the coordinator
and the Islands are connected to is killed mid-run; they reconnect to the others (the servers they
learnt from the cluster), and every job still ends terminal, once charged, with all its output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.chaos_support import NatsCluster, assert_invariants, chaos_stack, some_running, wait_until


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
            accepted += await chaos.submit(4)  # new work is taken through the surviving nodes
            await assert_invariants(chaos.runtime, accepted)
    finally:
        cluster.stop()
