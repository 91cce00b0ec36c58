"""The procrastinate app, its queues and the schedule of domain-rules (Background workers)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import procrastinate
import structlog

from coordinator.accounts import service as accounts
from coordinator.billing import exchange as market
from coordinator.billing import payouts, providers
from coordinator.hosts import liveness
from coordinator.jobs import recovery
from coordinator.runtime import Runtime
from coordinator.telemetry import context as telemetry_context
from coordinator.telemetry import metrics

log = structlog.get_logger(__name__)

QUEUES = ("maintenance", "payouts", "security_scans")


def create_app(conninfo: str) -> procrastinate.App:
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=conninfo, min_size=1, max_size=4)
    )
    register_tasks(app)
    return app


def _runtime(context: procrastinate.JobContext) -> Runtime:
    runtime: Runtime = context.additional_context["runtime"]
    return runtime


async def _timed(name: str, body: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Run one background job body: its log lines carry `worker`, its run is counted by outcome and timed;
    a failure is logged and re-raised so procrastinate records it (and retries when the task says so)."""
    started = time.perf_counter()
    with telemetry_context.bind(worker=name):
        try:
            result = await body()
        except Exception:
            elapsed = time.perf_counter() - started
            metrics.worker_runs.labels(worker=name, outcome="failure").inc()
            metrics.worker_seconds.labels(worker=name).observe(elapsed)
            log.exception("worker.failed", duration_ms=round(elapsed * 1000, 1))
            raise
        elapsed = time.perf_counter() - started
        metrics.worker_runs.labels(worker=name, outcome="success").inc()
        metrics.worker_seconds.labels(worker=name).observe(elapsed)
        log.info("worker.ran", duration_ms=round(elapsed * 1000, 1), **result)
    return result


def _pending(name: str, owner: str) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def body() -> dict[str, Any]:
        log.info("worker.not_implemented", worker=name, owner=owner)
        return {"implemented": False}

    return body


def register_tasks(app: procrastinate.App) -> None:
    """Declare every background job with its queue and cron schedule (domain-rules table)."""

    @app.periodic(cron="* * * * *", periodic_id="host_health")
    @app.task(queue="maintenance", name="host_health", pass_context=True)
    async def host_health(context: procrastinate.JobContext, timestamp: int) -> dict[str, Any]:
        runtime = _runtime(context)

        async def body() -> dict[str, Any]:
            async with runtime.db.transaction() as session:
                offline = await liveness.mark_silent_hosts_offline(
                    session, runtime.settings.heartbeat_timeout_seconds
                )
            return {"marked_offline": len(offline)}

        return await _timed("host_health", body)

    @app.periodic(cron="0 * * * *", periodic_id="auth_cleanup")
    @app.task(queue="maintenance", name="auth_cleanup", pass_context=True)
    async def auth_cleanup(context: procrastinate.JobContext, timestamp: int) -> dict[str, Any]:
        runtime = _runtime(context)

        async def body() -> dict[str, Any]:
            async with runtime.db.transaction() as session:
                links, sessions = await accounts.delete_expired_auth_tokens(session)
            return {"magic_links": links, "sessions": sessions}

        return await _timed("auth_cleanup", body)

    @app.periodic(cron="* * * * *", periodic_id="job_lease")
    @app.task(queue="maintenance", name="job_lease", pass_context=True)
    async def job_lease(context: procrastinate.JobContext, timestamp: int) -> dict[str, Any]:
        runtime = _runtime(context)
        return await _timed("job_lease", lambda: recovery.sweep(runtime))

    @app.periodic(cron="*/5 * * * *", periodic_id="dead_letter")
    @app.task(queue="maintenance", name="dead_letter", pass_context=True)
    async def dead_letter(context: procrastinate.JobContext, timestamp: int) -> dict[str, Any]:
        # Start timeouts and exhausted attempts are part of the same sweep; running it here as well makes
        # the dead-lettering durable even when no replica's in-process sweeper runs.
        runtime = _runtime(context)
        return await _timed("dead_letter", lambda: recovery.sweep(runtime))

    @app.periodic(cron="*/5 * * * *", periodic_id="job_retry")
    @app.task(queue="maintenance", name="job_retry", pass_context=True)
    async def job_retry(context: procrastinate.JobContext, timestamp: int) -> dict[str, Any]:
        runtime = _runtime(context)
        return await _timed("job_retry", lambda: recovery.retry_queued(runtime))

    @app.periodic(cron="30 * * * *", periodic_id="reputation")
    @app.task(queue="maintenance", name="reputation", pass_context=True)
    async def reputation(context: procrastinate.JobContext, timestamp: int) -> dict[str, Any]:
        return await _timed("reputation", _pending("reputation", "the registry work (no issue yet)"))

    @app.periodic(cron="0 3 * * 0", periodic_id="rescan_scheduler")
    @app.task(queue="maintenance", name="rescan_scheduler", pass_context=True)
    async def rescan_scheduler(context: procrastinate.JobContext, timestamp: int) -> dict[str, Any]:
        return await _timed(
            "rescan_scheduler", _pending("rescan_scheduler", "the registry work (no issue yet)")
        )

    @app.periodic(cron="0 2 * * 0", periodic_id="payout_batch")
    @app.task(queue="payouts", name="payout_batch", pass_context=True)
    async def payout_batch(context: procrastinate.JobContext, timestamp: int) -> dict[str, Any]:
        runtime = _runtime(context)

        async def body() -> dict[str, Any]:
            settings = runtime.settings
            result = await payouts.run_payout_batch(
                runtime.db,
                providers.provider_from_settings(settings),
                threshold=settings.karma_monetization_threshold,
                minimum=Decimal(str(settings.payout_minimum)),
            )
            return {
                "created": result.created,
                "paid": result.paid,
                "failed": result.failed,
                "retry_later": result.retry_later,
                "amount_paid": float(result.amount_paid),
            }

        return await _timed("payout_batch", body)

    @app.periodic(cron="*/5 * * * *", periodic_id="market_snapshot")
    @app.task(queue="maintenance", name="market_snapshot", pass_context=True)
    async def market_snapshot(context: procrastinate.JobContext, timestamp: int) -> dict[str, Any]:
        runtime = _runtime(context)

        async def body() -> dict[str, Any]:
            settings = runtime.settings
            async with runtime.db.transaction() as session:
                surge = await market.compute_surge(
                    session,
                    ratio=Decimal(str(settings.surge_demand_ratio)),
                    multiplier=Decimal(str(settings.surge_multiplier)),
                )
                written = await market.take_snapshots(session, interval_seconds=300, surge=surge)
            return {"snapshots": written, "surge": float(surge)}

        return await _timed("market_snapshot", body)

    @app.task(queue="security_scans", name="workload_scan", pass_context=True)
    async def workload_scan(context: procrastinate.JobContext, workload_id: int) -> dict[str, Any]:
        return await _timed("workload_scan", _pending("workload_scan", "the registry work (no issue yet)"))
