"""The gauges computed from PostgreSQL: fleet every 15 s, jobs every 10 s, billing every 30 s.

One supervised loop runs each group when it is due; each group is one or two aggregate queries whose
result replaces the group's gauges at once (`metrics.snapshots`). A failing poll is logged and counted,
the previous values stay, and the loop carries on."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal

import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.loops import LoopService
from coordinator.runtime import Runtime
from coordinator.telemetry import metrics

log = structlog.get_logger(__name__)

# Islands by status and region (the hosts table is small: one row per Island).
ISLANDS_SQL = text("SELECT status, COALESCE(region, 'unknown') AS region, count(*) FROM hosts GROUP BY 1, 2")

# Slots online Islands offer and the slots in use.
CAPACITY_SQL = text(
    """
    SELECT COALESCE(sum(max_concurrent), 0), COALESCE(sum(active_jobs), 0)
    FROM hosts WHERE status = 'online'
    """
)

# Online Islands holding each Cargo warm.
WARM_SQL = text(
    """
    SELECT warm.workload, count(*) FROM hosts, unnest(hosts.warm_workload_ids) AS warm(workload)
    WHERE hosts.status = 'online' GROUP BY 1
    """
)

# Live jobs by state and Cargo; two branches so each uses its partial index (queued; assigned/running).
LIVE_JOBS_SQL = text(
    """
    SELECT live.state, w.slug, count(*) FROM (
        SELECT state, workload_id FROM jobs WHERE state = 'queued'
        UNION ALL
        SELECT state, workload_id FROM jobs WHERE state IN ('assigned', 'running')
    ) AS live JOIN workloads w ON w.id = live.workload_id
    GROUP BY 1, 2
    """
)

# Jobs that reached a terminal state in the last hour, by state and Cargo (index on completed_at).
FINISHED_JOBS_SQL = text(
    """
    SELECT j.state, w.slug, count(*) FROM jobs j JOIN workloads w ON w.id = j.workload_id
    WHERE j.completed_at > now() - interval '1 hour' GROUP BY 1, 2
    """
)

# Queue depth and the age of the oldest queued job (the ix_jobs_queue partial index).
QUEUE_SQL = text(
    """
    SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)
    FROM jobs WHERE state = 'queued'
    """
)

# Folds settled ledger rows into the running totals: those after the watermark up to the newest row
# older than `settle` seconds, by type (charges are stored negative, refunds and grants positive).
LEDGER_FOLD_SQL = text(
    """
    WITH edge AS (
        SELECT max(id) AS id FROM transactions
        WHERE id > :after AND created_at < now() - make_interval(secs => :settle)
    )
    SELECT t.type, count(*), COALESCE(sum(t.amount), 0), max(edge.id)
    FROM transactions t, edge WHERE t.id > :after AND t.id <= edge.id GROUP BY t.type
    """
)

# The ledger rows after the watermark, by type: a primary-key range scan over the last minutes.
LEDGER_TAIL_SQL = text(
    "SELECT type, count(*), COALESCE(sum(amount), 0) FROM transactions WHERE id > :after GROUP BY type"
)

# Payout volume by status.
PAYOUTS_SQL = text("SELECT status, count(*), COALESCE(sum(amount), 0) FROM payouts GROUP BY status")


def _gauge(name: str, doc: str, labels: list[str], rows: list[tuple[list[str], float]]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family


def _single(name: str, doc: str, value: float) -> Metric:
    return GaugeMetricFamily(name, doc, value=value)


async def collect_fleet(session: AsyncSession) -> list[Metric]:
    islands = (await session.execute(ISLANDS_SQL)).all()
    slots, busy = (await session.execute(CAPACITY_SQL)).one()
    warm = (await session.execute(WARM_SQL)).all()
    return [
        _gauge(
            "coordinator_islands",
            "Islands by status and region",
            ["status", "region"],
            [([status, region], count) for status, region, count in islands],
        ),
        _single(
            "coordinator_fleet_capacity_slots", "Job slots of online Islands (sum of max_concurrent)", slots
        ),
        _single("coordinator_fleet_busy_slots", "Job slots in use on online Islands", busy),
        _gauge(
            "coordinator_fleet_warm_islands",
            "Online Islands holding a Cargo warm, by Cargo",
            ["workload"],
            [([workload], count) for workload, count in warm],
        ),
    ]


async def collect_jobs(session: AsyncSession) -> list[Metric]:
    live = (await session.execute(LIVE_JOBS_SQL)).all()
    finished = (await session.execute(FINISHED_JOBS_SQL)).all()
    depth, oldest = (await session.execute(QUEUE_SQL)).one()
    return [
        _gauge(
            "coordinator_jobs",
            "Live jobs (queued, assigned, running) by state and Cargo",
            ["state", "workload"],
            [([state, slug], count) for state, slug, count in live],
        ),
        _gauge(
            "coordinator_jobs_finished_last_hour",
            "Jobs that reached a terminal state in the last hour, by state and Cargo",
            ["state", "workload"],
            [([state, slug], count) for state, slug, count in finished],
        ),
        _single("coordinator_job_queue_depth", "Jobs waiting for an Island (state queued)", depth),
        _single("coordinator_job_queue_oldest_seconds", "Age of the oldest queued job", float(oldest)),
    ]


class LedgerTotals:
    """All-time ledger totals by type, kept incrementally: each poll reads only the rows after the
    watermark. Rows older than `settle_seconds` are folded in for good (a ledger transaction commits in
    milliseconds, so none is still invisible by then); newer ones are re-read on every poll."""

    def __init__(self, settle_seconds: float = 300.0) -> None:
        self.settle_seconds = settle_seconds
        self.watermark = 0
        self.folded: dict[str, tuple[int, Decimal]] = {}

    async def read(self, session: AsyncSession) -> dict[str, tuple[int, Decimal]]:
        params = {"after": self.watermark, "settle": self.settle_seconds}
        for kind, count, total, edge in (await session.execute(LEDGER_FOLD_SQL, params)).all():
            self.folded[kind] = _plus(self.folded.get(kind), count, total)
            self.watermark = max(self.watermark, int(edge))
        totals = dict(self.folded)
        tail = await session.execute(LEDGER_TAIL_SQL, {"after": self.watermark})
        for kind, count, total in tail.all():
            totals[kind] = _plus(totals.get(kind), count, total)
        return totals


def _plus(seen: tuple[int, Decimal] | None, count: int, total: Decimal) -> tuple[int, Decimal]:
    seen_count, seen_total = seen or (0, Decimal(0))
    return seen_count + count, seen_total + Decimal(total)


async def collect_billing(session: AsyncSession, ledger: dict[str, tuple[int, Decimal]]) -> list[Metric]:
    payouts = (await session.execute(PAYOUTS_SQL)).all()
    charges = -ledger.get("charge", (0, Decimal(0)))[1]
    refunds = ledger.get("refund", (0, Decimal(0)))[1]
    return [
        _single("coordinator_billing_charged_credits", "Credits charged at submit, all time", float(charges)),
        _single("coordinator_billing_refunded_credits", "Credits refunded, all time", float(refunds)),
        _single(
            "coordinator_billing_revenue_credits", "Charges minus refunds, all time", float(charges - refunds)
        ),
        _gauge(
            "coordinator_billing_transactions",
            "Ledger rows by type, all time",
            ["type"],
            [([kind], count) for kind, (count, _) in ledger.items()],
        ),
        _gauge(
            "coordinator_billing_payout_credits",
            "Payout volume by status, all time",
            ["status"],
            [([status], float(total)) for status, _, total in payouts],
        ),
        _gauge(
            "coordinator_billing_payouts",
            "Payouts by status, all time",
            ["status"],
            [([status], count) for status, count, _ in payouts],
        ),
    ]


@dataclass
class Group:
    name: str
    interval: float
    collect: Callable[[AsyncSession], Awaitable[list[Metric]]]
    due_at: float = 0.0


class MetricsCollector(LoopService):
    """Polls PostgreSQL for the fleet, jobs and billing gauges, each group at its own interval."""

    name = "collectors"

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime
        self.ledger = LedgerTotals()
        settings = runtime.settings
        self.groups = [
            Group("fleet", settings.metrics_fleet_interval_seconds, collect_fleet),
            Group("jobs", settings.metrics_jobs_interval_seconds, collect_jobs),
            Group("billing", settings.metrics_billing_interval_seconds, self._collect_billing),
        ]
        # Tick at the intervals' common divisor so each group runs on time (15/10/30 s → every 5 s).
        self.interval = float(max(1, math.gcd(*(max(1, round(g.interval)) for g in self.groups))))

    async def _collect_billing(self, session: AsyncSession) -> list[Metric]:
        return await collect_billing(session, await self.ledger.read(session))

    async def run_once(self) -> None:
        now = time.monotonic()
        for group in self.groups:
            if now >= group.due_at:
                group.due_at = now + group.interval
                await self.poll(group)

    async def collect_all(self) -> None:
        """Poll every group now (start-up, tests)."""
        for group in self.groups:
            await self.poll(group)

    async def poll(self, group: Group) -> bool:
        started = time.perf_counter()
        try:
            async with self.runtime.db.session() as session:
                families = await group.collect(session)
        except Exception as exc:
            metrics.collector_errors.labels(group=group.name).inc()
            log.warning("telemetry.collector_failed", group=group.name, error=repr(exc))
            return False
        metrics.snapshots.publish(group.name, families)
        metrics.collector_seconds.labels(group=group.name).observe(time.perf_counter() - started)
        return True
