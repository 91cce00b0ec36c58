"""The supervision tree of one coordinator process (DESIGN §3) and the children it is made of."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any

import structlog
import uvicorn

from coordinator.hosts.fleet import FleetView
from coordinator.runtime import TREE_READY_COMPONENT, Runtime
from coordinator.supervisor import Child, Supervisor
from coordinator.telemetry.child import TelemetryChild
from coordinator.telemetry.collectors import MetricsCollector
from coordinator.telemetry.context import correlate_job
from coordinator.telemetry.endpoint import MetricsEndpointChild

log = structlog.get_logger(__name__)


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
        runtime.components[TREE_READY_COMPONENT] = False

    async def run(self, ready: Callable[[], None]) -> None:
        self.runtime.components[TREE_READY_COMPONENT] = True
        ready()
        try:
            await asyncio.Event().wait()
        finally:
            self.runtime.components[TREE_READY_COMPONENT] = False


def build_children(runtime: Runtime, *, with_worker: bool = False, http: bool = True) -> list[Child]:
    """The tree in start order: telemetry, database, metric collectors (with HTTP, which serves them),
    pub/sub, output accumulator and batch hook, background jobs, HTTP (or, without it, the bare metrics
    endpoint if a port is set), then (if configured) the NATS subtree: hosts, then the job pipeline; last
    the ready marker (`/readyz` answers ready only once everything before it started)."""
    children: list[Child] = [TelemetryChild(runtime), DatabaseChild(runtime)]
    if http and runtime.settings.metrics_collectors:
        children.append(MetricsCollector(runtime))
    children.extend(streaming_children(runtime))
    if with_worker:
        children.append(WorkerChild(runtime))
    if http:
        from coordinator.billing.quotas import RateCounterSync
        from coordinator.web.ratelimit import rate_counter

        interval = runtime.settings.rate_limit_sync_seconds
        children += [RateCounterSync(runtime.db, rate_counter(runtime), interval), HttpChild(runtime)]
    elif runtime.settings.metrics_port:
        children.append(MetricsEndpointChild(runtime))
    fleet = FleetView(heartbeat_timeout=float(runtime.settings.heartbeat_timeout_seconds))
    runtime.components["fleet"] = fleet
    if runtime.settings.nats_enabled:
        children.append(NatsConnectionChild(runtime))
        if runtime.settings.nats_auth_enabled:
            from coordinator.nats.auth_callout import AuthCalloutChild

            children.append(AuthCalloutChild(runtime))
        children.extend(hosts_children(runtime, fleet))
        children.extend(job_children(runtime))
    children.append(ReadyMarker(runtime))
    return children


def hosts_children(runtime: Runtime, fleet: FleetView) -> list[Child]:
    """Heartbeat flusher, in-memory liveness, then the host handler (stopped first, flushed last)."""
    from coordinator.hosts.flusher import HeartbeatFlusher
    from coordinator.hosts.liveness import FleetLiveness
    from coordinator.nats.host_handler import HostHandlerChild

    settings = runtime.settings
    flusher = HeartbeatFlusher(
        runtime.db, approval_required=settings.approval_required, interval=settings.heartbeat_flush_seconds
    )
    return [flusher, FleetLiveness(runtime.db, fleet), HostHandlerChild(runtime, fleet, flusher)]


def streaming_children(runtime: Runtime) -> list[Child]:
    """Pub/sub (bridged over NATS once the connection is up), the output accumulator after it, and the
    batch hook (advances server-side batches when their children end)."""
    from coordinator.jobs.batches import BatchHookChild
    from coordinator.jobs.output import OutputAccumulatorChild
    from coordinator.pubsub import PubSubChild

    return [PubSubChild(runtime), OutputAccumulatorChild(runtime), BatchHookChild(runtime)]


def job_children(runtime: Runtime) -> list[Child]:
    """The job pipeline over NATS: bus (streams, wake-ups), the cross-replica stream router, Island job
    messages, status consumer, dispatcher and the fast lease sweeper."""
    from coordinator.jobs.dispatcher import Dispatcher
    from coordinator.jobs.recovery import LeaseSweeper
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
