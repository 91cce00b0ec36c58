"""One reference Island on the wire: connect, register, pair, take jobs from JetStream, heartbeat, lease."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import structlog
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

from coordinator.protocol import messages as m
from coordinator.protocol import subjects
from coordinator.protocol.codec import ProtocolError
from island import system
from island.cargo_io import JobFailed
from island.pull import ContinuousPull
from island.runtimes import RUNNERS, RuntimeOptions, container_timeout, runtime_for

log = structlog.get_logger(__name__)

AGENT_VERSION = "0.4.0"
# How long a stopping Island waits for its outgoing messages to be flushed before closing.
DRAIN_SECONDS = 2.0
# How long a stopping Island waits for its cancelled tasks (a library that turns a cancellation into an
# error its caller retries must not keep the process, or a test, up for ever).
STOP_SECONDS = 5.0
WARM_TTL_SECONDS = 3600.0
# Runtimes whose jobs renew their lease (the official container and WASM executors).
LEASED_RUNTIMES = {"mock-llm", "mock-image", "wasm", "process"}


@dataclass
class IslandConfig:
    nats_url: str = "nats://localhost:4222"
    state_dir: Path = field(default_factory=lambda: Path.home() / ".island")
    host_id: str | None = None
    region: str | None = "auto"
    gpu_model: str | None = None
    gpu_vram_mb: int | None = None
    cpu_cores: int | None = None  # None: this machine's
    ram_mb: int | None = None
    heartbeat_interval: float = 10.0
    lease_interval: float = 30.0
    asking_prices: dict[str, str] | None = None
    supported_runtimes: list[str] = field(default_factory=lambda: ["container", "wasm", "onnx"])
    use_jetstream: bool = True
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)


class JobReporter:
    """Publishes one job's status/output/progress/image on the Island's own subjects (core NATS)."""

    def __init__(self, nc: Any, host_id: str, job_id: str) -> None:
        self.nc, self.host_id, self.job_id = nc, host_id, job_id

    async def _send(
        self, suffix: str, message: m.JobStatus | m.JobOutput | m.JobProgress | m.JobImage
    ) -> None:
        await self.nc.publish(subjects.host_subject(self.host_id, suffix), message.encode())

    async def status(self, state: str, error: str | None = None) -> None:
        await self._send("status", m.JobStatus(self.job_id, state, int(time.time() * 1000), error))

    async def output(self, seq: int, chunk: str, is_final: bool) -> None:
        await self._send("output", m.JobOutput(self.job_id, seq, chunk, is_final))

    async def progress(self, step: int, total: int) -> None:
        await self._send("progress", m.JobProgress(self.job_id, step, total))

    async def image(self, data: str, fmt: str, width: int, height: int, seed: int | None = None) -> None:
        await self._send("image", m.JobImage(self.job_id, data, fmt, width, height, seed))


class Island:
    def __init__(self, config: IslandConfig) -> None:
        from island.state import IslandState

        self.config = config
        self.state_path = config.state_dir / "state.json"
        self.state = IslandState.load(self.state_path, config.host_id)
        self.host_id = self.state.host_id
        local = system.local_capabilities(config.region)
        self.capabilities = m.Capabilities(
            gpu_model=config.gpu_model,
            gpu_vram_mb=config.gpu_vram_mb if config.gpu_model else None,
            cpu_cores=config.cpu_cores or local.cpu_cores,
            ram_mb=config.ram_mb or local.ram_mb,
            region=config.region,
        )
        self.nc: Any = None
        self.jobs: dict[str, asyncio.Task[None]] = {}
        self.warm: dict[str, float] = {}
        self.pairing_code: str | None = None
        self.preloads: list[m.PreloadRecommendation] = []
        self.jetstream = False
        self.rtt_ms: float | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._pull_sub: ContinuousPull | None = None
        self._stopping = False

    @property
    def name(self) -> str:
        return f"island-{self.host_id[:8]}"

    def subject(self, suffix: str) -> str:
        return subjects.host_subject(self.host_id, suffix)

    async def start(self) -> None:
        """The official start-up order (island-protocol §1): connect, register, pair, jobs, subs, beat."""
        self._stopping = False
        self.nc = await nats.connect(
            self.config.nats_url, name=self.name, max_reconnect_attempts=-1, reconnect_time_wait=1
        )
        register = m.RegisterHost(self.host_id, self.capabilities, AGENT_VERSION)
        await self.nc.publish(subjects.REGISTER, register.encode())
        if not self.state.paired:
            await self.request_pairing()
        await self._subscribe_jobs()
        await self.nc.subscribe(self.subject("cancel"), cb=self._on_cancel)
        await self.nc.subscribe(self.subject("probe"), cb=self._on_probe)
        await self.nc.subscribe(self.subject("preload"), cb=self._on_preload)
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name=f"{self.name}:heartbeat"))
        # The subscriptions are live at the server before start returns (on core NATS a job published
        # before its SUB arrived would be missed).
        await self.nc.flush()
        log.info("island.started", host_id=self.host_id, jetstream=self.jetstream)

    async def stop(self) -> None:
        await self.stop_tasks()
        if self._pull_sub is not None:
            # A pull cancelled above leaves its inbox subscription's queue unfinished, and a drain would
            # wait on it for ever (Ctrl-C on `make run` hung 10 s here): leave it first.
            await self._pull_sub.close()
            self._pull_sub = None
        if self.nc is not None:
            try:
                await asyncio.wait_for(self.nc.drain(), DRAIN_SECONDS)
            except Exception:
                with contextlib.suppress(Exception):
                    await self.nc.close()

    async def stop_tasks(self) -> None:
        """Cancel the heartbeat, job intake and running jobs (whatever the transport), waiting a bounded
        time for them to end."""
        self._stopping = True
        tasks = [*self._tasks, *self.jobs.values()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=STOP_SECONDS)
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved: a job's own error was reported on the wire already
        if pending:
            log.warning("island.tasks_did_not_stop", tasks=sorted(t.get_name() for t in pending))

    async def request_pairing(self) -> None:
        try:
            reply = await self.nc.request(
                subjects.PAIRING, m.PairingRequest(self.host_id).encode(), timeout=10
            )
            response = m.parse_pairing_response(reply.data)
        except Exception as exc:  # the Island only logs a failed pairing request
            log.debug("island.pairing_failed", error=str(exc))
            return
        if response.already_paired:
            self.state.mark_paired(self.state_path)
        elif response.success and response.code:
            self.pairing_code = response.code
            minutes = (response.expires_in_seconds or 0) // 60
            log.info("island.pairing_code", code=response.code, minutes=minutes, url=response.pair_url)

    async def _subscribe_jobs(self) -> None:
        if self.config.use_jetstream:
            try:
                js = self.nc.jetstream()
                await js.stream_info(subjects.JOBS_STREAM)
                durable = subjects.jobs_consumer(self.host_id)
                try:
                    await js.consumer_info(subjects.JOBS_STREAM, durable)
                except NotFoundError:
                    await js.add_consumer(
                        subjects.JOBS_STREAM,
                        ConsumerConfig(
                            # `name` too: the API subject then carries the filter (CONSUMER.CREATE.JOBS
                            # .<name>.<filter>), as the official Island's, which a broker confining
                            # Islands to their own consumer allows (DURABLE.CREATE it does not).
                            name=durable,
                            durable_name=durable,
                            filter_subject=self.subject("jobs"),
                            ack_policy=AckPolicy.EXPLICIT,
                            max_deliver=5,
                            ack_wait=60,
                        ),
                    )
                self._pull_sub = ContinuousPull(self.nc, subjects.JOBS_STREAM, durable)
                self.jetstream = True
                self._tasks.append(
                    asyncio.create_task(self._pull_jobs(self._pull_sub), name=f"{self.name}:jobs")
                )
                return
            except Exception as exc:  # no stream, no JetStream: core subscription for the process's life
                log.info("island.jetstream_unavailable", error=str(exc))
        await self.nc.subscribe(self.subject("jobs"), cb=self._on_job)

    async def _pull_jobs(self, pull: ContinuousPull) -> None:
        while not self._stopping:
            try:
                async for msg in pull.messages():
                    await msg.ack()  # ack on receipt, before parsing ("ack-on-spawn")
                    self._start_job(msg.data)
            except Exception as exc:  # disconnected or consumer gone: retry rather than stop taking jobs
                if self._stopping:  # (nats-py answers a cancel on a closed connection with an error)
                    return
                log.warning("island.pull_failed", error=str(exc))
                await asyncio.sleep(1)

    async def _on_job(self, msg: Any) -> None:
        self._start_job(msg.data)

    def _start_job(self, data: bytes) -> None:
        try:
            job = m.parse_assign_job(data)
        except ProtocolError as exc:  # dropped silently: no status for an unparsable job
            log.warning("island.bad_job", error=str(exc))
            return
        self.jobs[job.job_id] = asyncio.create_task(self._execute(job), name=f"job:{job.job_id}")

    async def _execute(self, job: m.AssignJob) -> None:
        report = JobReporter(self.nc, self.host_id, job.job_id)
        lease: asyncio.Task[None] | None = None
        try:
            await report.status("started")
            runtime = runtime_for(job, self.config.runtime)
            if runtime not in RUNNERS:
                raise JobFailed(
                    f"Job {job.job_id} requires Docker but Docker is not available. "
                    "Install Docker to run container workloads."
                )
            if runtime in LEASED_RUNTIMES:
                lease = asyncio.create_task(self._renew_lease(job.job_id))
            if runtime == "wasm":  # the WASM runtime keeps its own 60 s wall clock
                await RUNNERS[runtime](job, report, self.config.runtime)
            else:
                limit = container_timeout(job)
                try:
                    await asyncio.wait_for(RUNNERS[runtime](job, report, self.config.runtime), limit)
                except TimeoutError:
                    # The official text always says 300 s, whatever the tier (island-protocol §7).
                    raise JobFailed("Timeout: job exceeded 300s limit") from None
        except JobFailed as failure:
            await report.status("failed", str(failure))
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(report.status("cancelled"))
            raise
        except Exception as exc:
            log.exception("island.job_crashed", job_id=job.job_id)
            await report.status("failed", str(exc) or type(exc).__name__)
        else:
            await report.status("succeeded")
            if job.workload_id is not None:
                self.warm[str(job.workload_id)] = time.monotonic()
        finally:
            if lease is not None:
                lease.cancel()
            self.jobs.pop(job.job_id, None)

    async def _renew_lease(self, job_id: str) -> None:
        while True:
            await asyncio.sleep(self.config.lease_interval)
            await self.nc.publish(self.subject("lease"), m.LeaseRenewal(job_id, 60).encode())

    async def _on_cancel(self, msg: Any) -> None:
        await self._cancel(msg.data)

    async def _cancel(self, data: bytes) -> None:
        with contextlib.suppress(ProtocolError):
            task = self.jobs.get(m.parse_cancel(data).job_id)
            if task is not None:
                task.cancel()

    async def _on_probe(self, msg: Any) -> None:
        if msg.reply:
            await self.nc.publish(msg.reply, b"pong")

    async def _on_preload(self, msg: Any) -> None:
        self._preload(msg.data)

    def _preload(self, data: bytes) -> None:
        with contextlib.suppress(ProtocolError):
            self.preloads.append(m.parse_preload(data))

    async def measure_rtt(self) -> float:
        started = time.perf_counter()
        try:
            await self.nc.request(self.subject("ping"), b"ping", timeout=5)
        except Exception:  # no responder or timeout: time a server round trip instead
            started = time.perf_counter()
            await self.nc.flush()
        return (time.perf_counter() - started) * 1000

    def heartbeat(self) -> m.Heartbeat:
        now = time.monotonic()
        warm = [
            w for w, at in sorted(self.warm.items(), key=lambda kv: -kv[1]) if now - at < WARM_TTL_SECONDS
        ]
        gpus = None
        if self.capabilities.gpu_model and self.capabilities.gpu_vram_mb:
            busy = bool(self.jobs)
            gpus = [
                m.GpuMetrics(
                    index=0,
                    utilization_percent=90 if busy else 2,
                    memory_used_mb=self.capabilities.gpu_vram_mb // 2 if busy else 512,
                    memory_total_mb=self.capabilities.gpu_vram_mb,
                    temperature_c=70 if busy else 40,
                    power_draw_w=250.0 if busy else 25.5,
                )
            ]
        return m.Heartbeat(
            host_id=self.host_id,
            active_jobs=len(self.jobs),
            timestamp=int(time.time() * 1000),
            agent_version=AGENT_VERSION,
            system=system.system_metrics(),
            gpus=gpus,
            cache=m.CacheStats(warm_workload_ids=warm),
            performance_estimates=system.performance_estimates(
                self.capabilities, self.config.supported_runtimes, self.rtt_ms
            ),
            asking_prices=self.config.asking_prices,
        )

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            try:
                self.rtt_ms = await self.measure_rtt()
                await self.nc.publish(self.subject("heartbeat"), self.heartbeat().encode())
            except Exception as exc:
                log.warning("island.heartbeat_failed", error=str(exc))
            await asyncio.sleep(self.config.heartbeat_interval)
