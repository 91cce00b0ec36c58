"""Durable output (JOB_OUTPUT): a coordinator SIGKILLed mid-stream and restarted completes every job
with the whole output its Island sent (chunks sent while it was down, or applied but never stored by
the dead process, are redelivered); a sequence gap never becomes a truncated success: after
`output_gap_grace_seconds` the job fails with a refund and the reason."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text

from coordinator.jobs.output_check import INCOMPLETE_OUTPUT
from tests.chaos_support import OUTPUT, TOKENS, ChaosIsland, assert_invariants, chaos_stack, wait_until
from tests.job_support import assert_money_conserved, balance, make_island


async def tokens_stored(chaos: Any) -> int:
    async with chaos.runtime.db.session() as session:
        count = await session.scalar(text("SELECT count(*) FROM job_events WHERE event->>'type' = 'token'"))
    return int(count or 0)


async def test_chaos_coordinator_sigkilled_mid_stream_completes_with_the_full_output(
    database_url: str, nats_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    async with chaos_stack(database_url, nats_url, tmp_path, monkeypatch, chunk_delay=0.25) as chaos:
        accepted = await chaos.submit(6)
        assert len(accepted) == 6

        async def mid_stream() -> bool:
            return 3 <= await tokens_stored(chaos) < 6 * len(TOKENS) // 2

        await wait_until(mid_stream)
        chaos.coordinator.sigkill()
        await asyncio.sleep(1.0)  # the Islands keep streaming into JOB_OUTPUT while it is down
        chaos.coordinator.start()
        await chaos.healthy()
        states = await assert_invariants(chaos.runtime, accepted)
        assert states == {"succeeded": len(accepted)}, states


@dataclass
class GapIsland(ChaosIsland):
    """Streams TOKENS but never sends seq 3 (lost on the way), then its final chunk and `succeeded`."""

    async def _play(self, job: dict[str, Any]) -> None:
        job_id = job["job_id"]
        await self.status(job_id, "started")
        for seq, chunk in enumerate(self.chunks, start=1):
            if seq != 3:
                await self.publish(
                    "output", {"job_id": job_id, "seq": seq, "chunk": chunk, "is_final": False}
                )
        final = {"job_id": job_id, "seq": len(self.chunks) + 1, "chunk": "", "is_final": True}
        await self.publish("output", final)
        await self.status(job_id, "succeeded")


async def test_a_sequence_gap_fails_the_job_with_a_refund_after_the_grace_period(
    database_url: str, nats_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    env = {
        "COORDINATOR_OUTPUT_GAP_GRACE_SECONDS": "1.5",
        "COORDINATOR_JOB_MAX_ATTEMPTS": "1",
        "COORDINATOR_JOB_LEASE_SECONDS": "30",  # the lease outlives the grace: the gap decides
    }
    async with chaos_stack(database_url, nats_url, tmp_path, monkeypatch, islands=0, env=env) as chaos:
        island = GapIsland(nats_url, chunks=TOKENS, heartbeat_every=1.0)
        chaos.islands.append(island)
        await make_island(chaos.runtime, host_id=island.host_id)
        await island.start()
        before = await balance(chaos.runtime, chaos.consumer.user.id)
        [job_id] = await chaos.submit(1)
        states = await assert_invariants(chaos.runtime, [job_id], min_succeeded=0)
        assert states == {"failed": 1}, states
        async with chaos.runtime.db.session() as session:
            row = (
                await session.execute(text("SELECT error, output FROM jobs WHERE id = :id"), {"id": job_id})
            ).one()
        assert row.error == INCOMPLETE_OUTPUT
        assert (row.output or "") != OUTPUT
        assert await balance(chaos.runtime, chaos.consumer.user.id) == before  # refunded in full
        await assert_money_conserved(chaos.runtime)
