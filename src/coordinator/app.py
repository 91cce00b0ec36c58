"""The supervision tree of one coordinator process (DESIGN §3) and the children it is made of."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import structlog
import uvicorn

from coordinator.accounts import principals as principal_cache
from coordinator.accounts.mailer import Mailer
from coordinator.accounts.principals import PrincipalCache
from coordinator.billing.exchange import Surge, TtlCache
from coordinator.billing.quotas import RateCounter, RateCounterSync
from coordinator.config import Settings
from coordinator.hosts.fleet import FleetView
from coordinator.hosts.network import CachedNetworkStats
from coordinator.jobs import moves
from coordinator.jobs.batches import advance_hook
from coordinator.jobs.effects import builtin_hooks
from coordinator.jobs.hooks import HookRegistry
from coordinator.jobs.intake import JobIntake
from coordinator.jobs.output_basic import BasicOutput
from coordinator.karma import service as karma
from coordinator.pubsub import PubSub
from coordinator.repo.database import Database
from coordinator.runtime import Runtime
from coordinator.supervisor import Child, Supervisor
from coordinator.telemetry.child import TelemetryChild
from coordinator.telemetry.collectors import MetricsCollector
from coordinator.telemetry.context import correlate_job
from coordinator.telemetry.endpoint import MetricsEndpointChild
from coordinator.web.channels.registry import ChannelRegistry
from coordinator.workloads.catalogue import Catalogue

log = structlog.get_logger(__name__)


def build_runtime(settings: Settings) -> Runtime:
    """The process's components, each built once, here; the tree's children fill in the rest as they run."""
    principals = PrincipalCache(ttl=settings.api_key_cache_seconds)
    runtime = Runtime(
        settings=settings,
        db=Database(
            settings.database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            info={
                principal_cache.CACHE_INFO: principals,
                karma.POLICY_INFO: karma.policy_from_settings(settings),
            },
        ),
        mailer=Mailer(
            smtp_host=settings.smtp_host,
            smtp_port=settings.smtp_port,
            smtp_user=settings.smtp_user,
            smtp_password=settings.smtp_password,
            sender=settings.smtp_from,
        ),
        pubsub=PubSub(queue_size=settings.pubsub_queue_size),
        fleet=FleetView(heartbeat_timeout=float(settings.heartbeat_timeout_seconds)),
        hooks=HookRegistry(),
        surge=Surge.from_settings(settings),
        market_rates=TtlCache[Decimal | None](ttl=10),
        catalogue=Catalogue(),
        principals=principals,
        rate_counter=RateCounter(),
        network_stats=CachedNetworkStats(),
        scan_slots=asyncio.Semaphore(settings.registry_scan_concurrency),
    )
    # run before the extension hooks (`jobs/lifecycle.py`)
    runtime.builtin_hooks = {**builtin_hooks(runtime), moves.ADVANCE_BATCH: advance_hook(runtime)}
    runtime.output = BasicOutput(runtime)
    runtime.job_intake = JobIntake(runtime)
    runtime.channels = ChannelRegistry(runtime)
    return runtime


class DatabaseChild(Child):
    name = "database"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def run(self, ready: Callable[[], None]) -> None:
        if not await self.runtime.db.ping():
            raise RuntimeError("database unreachable")
        ready()
        try:
            await asyncio.Event().wait()
        finally:
            await self.runtime.db.dispose()


class NatsConnectionChild(Child):
    """The process's NATS connection; the handlers that follow it in the tree use `runtime.nats`."""

    name = "nats"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def run(self, ready: Callable[[], None]) -> None:
        import nats

        nc = await nats.connect(
            self.runtime.settings.nats_url or "",
            name="coordinator",
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
        )
        self.runtime.nats = nc
        ready()
        try:
            await asyncio.Event().wait()
        finally:
            self.runtime.nats = None
            with contextlib.suppress(Exception):
                await nc.drain()

    async def drain(self) -> None:
        if self.runtime.nats is not None:
            await self.runtime.nats.flush()


class WorkerChild(Child):
    """The procrastinate worker embedded in this process (`serve --with-worker`, `worker`, `dev`)."""

    name = "worker"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def run(self, ready: Callable[[], None]) -> None:
        from coordinator.workers.app import QUEUES, create_app

        app = create_app(self.runtime.settings.libpq_database_url)
        async with app.open_async():
            ready()
            await app.run_worker_async(
                queues=list(QUEUES),
                concurrency=2,
                install_signal_handlers=False,
                additional_context={"runtime": self.runtime},
                delete_jobs="successful",
                worker_middleware=[correlate_job],
            )


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the supervisor owns signals
        pass

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


class HttpChild(Child):
    name = "http"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.server: _Server | None = None
        self.serving: asyncio.Task[None] | None = None

    async def run(self, ready: Callable[[], None]) -> None:
        from coordinator.web.app import create_app

        settings = self.runtime.settings
        config = uvicorn.Config(
            create_app(self.runtime),
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="off",
            ws=settings.websocket_implementation,
            ws_per_message_deflate=settings.websocket_per_message_deflate,
            timeout_graceful_shutdown=10,
            timeout_keep_alive=settings.http_keep_alive_seconds,
        )
        self.server = _Server(config)
        self.serving = serving = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if serving.done():
                await serving
                raise RuntimeError("HTTP server stopped during start-up")
            await asyncio.sleep(0.02)
        ready()
        await serving

    async def drain(self) -> None:
        if self.server is not None and self.serving is not None:
            self.server.should_exit = True
            await asyncio.wait({self.serving})


class ReadyMarker(Child):
    """The last child of the tree: when it runs, every child before it is ready, so `/readyz` can say the
    replica is; it is also the first to stop, so a draining replica stops reporting ready at once."""

    name = "ready-marker"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        runtime.tree_ready = False

    async def run(self, ready: Callable[[], None]) -> None:
        self.runtime.tree_ready = True
        ready()
        try:
            await asyncio.Event().wait()
        finally:
            self.runtime.tree_ready = False


def build_children(runtime: Runtime, *, with_worker: bool = False, http: bool = True) -> list[Child]:
    """The tree in start order: telemetry, database, metric collectors (with HTTP, which serves them),
    pub/sub, output accumulator, background jobs, HTTP (or, without it, the bare metrics
    endpoint if a port is set), then (if configured) the NATS subtree: hosts, then the job pipeline; last
    the ready marker (`/readyz` answers ready only once everything before it started)."""
    children: list[Child] = [TelemetryChild(runtime), DatabaseChild(runtime)]
    if http and runtime.settings.metrics_collectors:
        children.append(MetricsCollector(runtime))
    children.extend(streaming_children(runtime))
    if with_worker:
        children.append(WorkerChild(runtime))
    if http:
        interval = runtime.settings.rate_limit_sync_seconds
        children += [RateCounterSync(runtime.db, runtime.rate_counter, interval), HttpChild(runtime)]
    elif runtime.settings.metrics_port:
        children.append(MetricsEndpointChild(runtime))
    if runtime.settings.nats_enabled:
        children.append(NatsConnectionChild(runtime))
        # The API key caches: this process's evictions to the others (a worker's too), theirs to it.
        from coordinator.nats.principals import PrincipalEvictionsChild

        children.append(PrincipalEvictionsChild(runtime))
        if runtime.settings.nats_auth_enabled:
            from coordinator.nats.auth_callout import AuthCalloutChild

            children.append(AuthCalloutChild(runtime))
        children.extend(hosts_children(runtime))
        children.extend(job_children(runtime))
    children.append(ReadyMarker(runtime))
    return children


def hosts_children(runtime: Runtime) -> list[Child]:
    """Heartbeat flusher, in-memory liveness, then the host handler (stopped first, flushed last)."""
    from coordinator.hosts.flusher import HeartbeatFlusher
    from coordinator.hosts.liveness import FleetLiveness
    from coordinator.nats.host_handler import HostHandlerChild

    settings = runtime.settings
    flusher = HeartbeatFlusher(
        runtime.db, approval_required=settings.approval_required, interval=settings.heartbeat_flush_seconds
    )
    return [flusher, FleetLiveness(runtime.db, runtime.fleet), HostHandlerChild(runtime, flusher)]


def streaming_children(runtime: Runtime) -> list[Child]:
    """Pub/sub (bridged over NATS once the connection is up) and the output accumulator after it."""
    from coordinator.jobs.output import OutputAccumulatorChild
    from coordinator.pubsub import PubSubChild

    return [PubSubChild(runtime), OutputAccumulatorChild(runtime)]


def job_children(runtime: Runtime) -> list[Child]:
    """The job pipeline over NATS: bus (streams, wake-ups), the cross-replica stream router, Island job
    messages, status consumer, dispatcher, the fast lease sweeper and the reputation recorder."""
    from coordinator.jobs.dispatcher import Dispatcher
    from coordinator.jobs.recovery import LeaseSweeper
    from coordinator.marketplace.reputation import ReputationRecorder
    from coordinator.nats.job_bus import JobBusChild
    from coordinator.nats.job_handler import JobHandlerChild
    from coordinator.nats.output_consumer import OutputConsumerChild
    from coordinator.nats.status_consumer import StatusConsumerChild
    from coordinator.nats.stream_router import StreamRouterChild

    return [
        JobBusChild(runtime),
        StreamRouterChild(runtime),
        JobHandlerChild(runtime),
        OutputConsumerChild(runtime),
        StatusConsumerChild(runtime),
        Dispatcher(runtime),
        LeaseSweeper(runtime),
        ReputationRecorder(runtime),
    ]


async def run_until_signalled(supervisor: Supervisor, *, on_started: Callable[[], Any] | None = None) -> None:
    """Start the tree, wait for SIGINT/SIGTERM, then drain and stop it in reverse order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await supervisor.start()
    if on_started is not None:
        on_started()
    try:
        await stop.wait()
    finally:
        log.info("coordinator.stopping")
        await supervisor.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
