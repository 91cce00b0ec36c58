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
from coordinator.marketplace import reputation, scanning
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
    async def reputation_task(context: procrastinate.JobContext, timestamp: int) -> dict[str, Any]:
        runtime = _runtime(context)
        return await _timed("reputation", lambda: reputation.run_hourly(runtime))

    @app.periodic(cron="0 3 * * 0", periodic_id="rescan_scheduler")
    @app.task(queue="maintenance", name="rescan_scheduler", pass_context=True)
    async def rescan_scheduler(context: procrastinate.JobContext, timestamp: int) -> dict[str, Any]:
        runtime = _runtime(context)

        async def body() -> dict[str, Any]:
            async with runtime.db.session() as session:
                due = await scanning.due_for_rescan(session, runtime.settings.registry_rescan_days)
            queued = [await _defer_scan(app, workload_id=workload_id) for workload_id in due]
            return {"due": len(due), "queued": sum(queued)}

        return await _timed("rescan_scheduler", body)

    @app.periodic(cron="*/5 * * * *", periodic_id="scan_backstop")
    @app.task(queue="maintenance", name="scan_backstop", pass_context=True)
    async def scan_backstop(context: procrastinate.JobContext, timestamp: int) -> dict[str, Any]:
        # Submissions whose scan job was never queued (a failed deferral) or whose worker died.
        runtime = _runtime(context)

        async def body() -> dict[str, Any]:
            async with runtime.db.transaction() as session:
                waiting = await scanning.requeue_stuck_scans(
                    session,
                    submitted_for=120,
                    scanning_for=2 * runtime.settings.registry_scan_timeout_seconds + 60,
                )
            queued = [await _defer_scan(app, submission_id=submission_id) for submission_id in waiting]
            return {"waiting": len(waiting), "queued": sum(queued)}

        return await _timed("scan_backstop", body)

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
                "skipped": {str(owner): why for owner, why in result.skipped.items()},
            }

        return await _timed("payout_batch", body)

    @app.periodic(cron="*/5 * * * *", periodic_id="market_snapshot")
    @app.task(queue="maintenance", name="market_snapshot", pass_context=True)
    async def market_snapshot(context: procrastinate.JobContext, timestamp: int) -> dict[str, Any]:
        runtime = _runtime(context)

        async def body() -> dict[str, Any]:
            async with runtime.db.transaction() as session:
                surge = await runtime.surge.compute(session)  # the dispatcher's rule, uncached
                written = await market.take_snapshots(session, interval_seconds=300, surge=surge)
            return {"snapshots": written, "surge": float(surge)}

        return await _timed("market_snapshot", body)

    @app.task(queue="security_scans", name="workload_scan", pass_context=True)
    async def workload_scan(
        context: procrastinate.JobContext, submission_id: int | None = None, workload_id: int | None = None
    ) -> dict[str, Any]:
        """Scan one image on demand: a submission's (then it moves on) or a published Cargo's rescan."""
        runtime = _runtime(context)
        if submission_id is not None:
            return await _timed("workload_scan", lambda: scanning.scan_submission(runtime, submission_id))
        if workload_id is not None:
            return await _timed("workload_scan", lambda: scanning.rescan_workload(runtime, workload_id))
        return {"skipped": "nothing to scan"}


async def _defer_scan(app: procrastinate.App, **target: int) -> bool:
    """Queue one WorkloadScan (once: a scan already queued for the same target is not queued again)."""
    ((kind, value),) = target.items()
    task = app.tasks["workload_scan"].configure(queueing_lock=f"scan-{kind}-{value}")
    try:
        await task.defer_async(**target)
    except procrastinate.exceptions.AlreadyEnqueued:
        return False
    return True


async def defer_scan(runtime: Runtime, **target: int) -> bool:
    """Queue a WorkloadScan from outside a worker (after a submission commits). A failure is logged and
    left to the `scan_backstop` sweep, which queues submissions still waiting after two minutes."""
    try:
        app = create_app(runtime.settings.libpq_database_url)
        async with app.open_async():
            return await _defer_scan(app, **target)
    except Exception:
        log.exception("registry.defer_scan_failed", **target)
        return False
