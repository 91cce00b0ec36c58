"""Batched heartbeat persistence: the latest beat of each Island is kept in memory and written to `hosts`
by one statement per flush, so 10,000 Islands beating every 10 s cost ~1 upsert batch a second."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import structlog
from sqlalchemy import text

from coordinator.hosts import rules
from coordinator.loops import LoopService
from coordinator.protocol.messages import Heartbeat
from coordinator.repo.database import Database
from coordinator.telemetry import metrics

log = structlog.get_logger(__name__)

# Upsert a batch of heartbeats (a JSON array, one row per Island); older beats never overwrite newer ones.
# The rows are written in id order, the order every transaction locking several Islands takes them in
# (in arrival order the upsert deadlocked now and then with a dispatch pass holding Island locks).
FLUSH_HEARTBEATS_SQL = text(
    """
    INSERT INTO hosts AS h (id, status, approved, agent_version, supported_runtimes, max_concurrent,
                            active_jobs, warm_workload_ids, asking_prices, last_heartbeat, rtt_ms,
                            last_heartbeat_at)
    SELECT b.id, :new_status, :new_approved, b.agent_version, b.supported_runtimes, b.max_concurrent,
           b.active_jobs, b.warm_workload_ids, b.asking_prices, CAST(b.raw AS jsonb), b.rtt_ms,
           to_timestamp(b.at)
    FROM jsonb_to_recordset(CAST(:batch AS jsonb)) AS b(
        id uuid, at double precision, agent_version text, supported_runtimes text[], max_concurrent int,
        active_jobs int, warm_workload_ids text[], asking_prices jsonb, raw text, rtt_ms double precision)
    ORDER BY b.id
    ON CONFLICT (id) DO UPDATE SET
        agent_version = EXCLUDED.agent_version, supported_runtimes = EXCLUDED.supported_runtimes,
        max_concurrent = EXCLUDED.max_concurrent, active_jobs = EXCLUDED.active_jobs,
        warm_workload_ids = EXCLUDED.warm_workload_ids, asking_prices = EXCLUDED.asking_prices,
        last_heartbeat = EXCLUDED.last_heartbeat, rtt_ms = COALESCE(EXCLUDED.rtt_ms, h.rtt_ms),
        last_heartbeat_at = EXCLUDED.last_heartbeat_at,
        status = CASE WHEN h.status = 'suspended' THEN 'suspended'
                      WHEN h.approved THEN 'online' ELSE 'pending_approval' END
    -- updated_at is left alone: it marks decisions (approval, suspension), which replicas re-read
    WHERE h.last_heartbeat_at IS NULL OR h.last_heartbeat_at <= EXCLUDED.last_heartbeat_at
    """
)


def heartbeat_row(host_id: uuid.UUID, beat: Heartbeat, raw: bytes, at: float) -> dict[str, Any]:
    """One row of the flush batch; strings are clipped to the column sizes."""
    perf = beat.performance_estimates
    return {
        "id": str(host_id),
        "at": at,
        "agent_version": beat.agent_version[:30],
        "supported_runtimes": [r[:20] for r in perf.supported_runtimes],
        "max_concurrent": max(1, min(perf.max_concurrent_containers, 2**31 - 1)),
        "active_jobs": min(beat.active_jobs, 2**31 - 1),
        "warm_workload_ids": [w[:20] for w in beat.cache.warm_workload_ids[:100]],
        "asking_prices": beat.asking_prices or {},
        "raw": raw.decode(),
        "rtt_ms": perf.nats_rtt_ms,
    }


class HeartbeatFlusher(LoopService):
    """Keeps the newest heartbeat per Island and upserts them all in one statement every `interval`."""

    name = "heartbeat-flusher"

    def __init__(self, db: Database, *, approval_required: bool, interval: float = 2.0) -> None:
        super().__init__()
        self.db = db
        self.interval = interval
        self.approval_required = approval_required
        self._pending: dict[uuid.UUID, dict[str, Any]] = {}
        self.flushes = 0

    def record(self, host_id: uuid.UUID, beat: Heartbeat, raw: bytes) -> None:
        self._pending[host_id] = heartbeat_row(host_id, beat, raw, time.time())

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def run_once(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        status, approved = rules.initial_status(self.approval_required)
        started = time.perf_counter()
        try:
            async with self.db.raw_statement() as session:  # one statement: atomic by itself
                await session.execute(
                    FLUSH_HEARTBEATS_SQL,
                    {
                        "batch": orjson.dumps(list(batch.values())).decode(),
                        "new_status": status,
                        "new_approved": approved,
                    },
                )
        except Exception:
            for host_id, row in batch.items():  # keep them for the next flush unless a newer beat came
                self._pending.setdefault(host_id, row)
            raise
        self.flushes += 1
        metrics.heartbeat_flush_seconds.observe(time.perf_counter() - started)

    async def teardown(self) -> None:
        """The last beats, once the loop stops."""
        try:
            await self.run_once()
        except Exception:
            log.exception("hosts.heartbeat_flush_failed", rows=self.pending)
