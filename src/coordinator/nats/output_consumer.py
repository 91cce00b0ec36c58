"""The JOB_OUTPUT durable pull consumer: `host.*.output` → the job's output stream, shared by every
replica (issue 18). Island output is a core publish captured by the `JOB_OUTPUT` stream, so chunks sent
while a coordinator is down, restarting or cut off from PostgreSQL wait in the stream.

A batch is applied (one job's chunks in stream order, different jobs concurrently), then this replica's
output buffer is flushed to PostgreSQL, and only then is the batch acknowledged: a replica killed before
the flush leaves its chunks unacknowledged, and they are redelivered (to a restarted or another replica)
after `ack_wait`. A duplicate changes nothing (the assembly drops a seq it has). A malformed message is
acknowledged, logged and counted; a transient failure is redelivered a bounded number of times."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from coordinator.jobs.intake import apply_job_message
from coordinator.jobs.output import accumulator_of
from coordinator.loops import LoopService
from coordinator.nats.job_handler import sender
from coordinator.nats.status_consumer import StatusConsumerChild, job_key
from coordinator.nats.streams import ensure_streams
from coordinator.protocol import subjects
from coordinator.protocol.codec import ProtocolError
from coordinator.runtime import Runtime
from coordinator.telemetry import context, metrics

log = structlog.get_logger(__name__)

MAX_DELIVER = 20
ACK_WAIT_SECONDS = 3.0
BATCH = 200
LONG_POLL_SECONDS = 5.0
CONCURRENCY = 8


def output_consumer_config() -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=subjects.OUTPUT_CONSUMER,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        max_deliver=MAX_DELIVER,
        ack_wait=ACK_WAIT_SECONDS,
        filter_subject=subjects.OUTPUT_SUBJECTS,
        max_ack_pending=20_000,
    )


async def apply_output(runtime: Runtime, subject: str, payload: bytes) -> None:
    """Apply one JobOutput; raises only on a transient failure worth a redelivery."""
    metrics.nats_messages.labels(subject_class="output").inc()
    try:
        await apply_job_message(runtime, sender(subject), "output", payload)
    except ProtocolError as exc:
        metrics.nats_malformed.labels(subject_class="output").inc()
        log.warning("nats.malformed", subject=subject, error=str(exc))


class OutputConsumerChild(LoopService):
    """Consumes `JOB_OUTPUT` with the shared durable pull consumer: each pass long-polls, then drains."""

    name = "output_consumer"
    interval = 0.0  # the long poll is the wait
    after_error = 1.0  # e.g. the connection is down: do not spin

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime
        self._psub: Any = None

    async def setup(self) -> None:
        nc = self.runtime.nats
        if nc is None:
            raise RuntimeError("NATS is not connected")
        js = nc.jetstream()
        await ensure_streams(js, self.runtime.settings.nats_stream_replicas)
        self._psub = await js.pull_subscribe(
            subjects.OUTPUT_SUBJECTS,
            durable=subjects.OUTPUT_CONSUMER,
            stream=subjects.OUTPUT_STREAM,
            config=output_consumer_config(),
        )

    async def run_once(self) -> None:
        msgs = await StatusConsumerChild.fetch(self._psub, 1, LONG_POLL_SECONDS)
        while msgs:
            await self._process_batch(msgs)
            msgs = await StatusConsumerChild.fetch(self._psub, BATCH, 0.02)

    async def drain(self) -> None:
        """No wait for the long poll: a message fetched and not yet acked is delivered again."""

    async def teardown(self) -> None:
        if self._psub is not None:
            psub, self._psub = self._psub, None
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def _process_batch(self, msgs: list[Any]) -> None:
        by_job: dict[str, list[Any]] = {}
        for index, msg in enumerate(msgs):
            by_job.setdefault(job_key(msg.data) or f"#{index}", []).append(msg)
        gate = asyncio.Semaphore(CONCURRENCY)
        applied: list[Any] = []

        async def in_order(group: list[Any]) -> None:
            async with gate:
                for position, msg in enumerate(group):
                    if not await self._apply(msg):
                        for later in group[position:]:  # keep the job's order: retry the rest after it
                            with contextlib.suppress(Exception):
                                await later.nak(delay=1)
                        return
                    applied.append(msg)

        await asyncio.gather(*(in_order(group) for group in by_job.values()))
        if not await self._flush():
            for msg in applied:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=1)
            return
        for msg in applied:
            with contextlib.suppress(Exception):
                await msg.ack()

    async def _apply(self, msg: Any) -> bool:
        """True once applied (or malformed: nothing to retry); False on a transient failure."""
        delivered = msg.metadata.num_delivered
        if delivered > 1:
            metrics.nats_redeliveries.labels(stream=subjects.OUTPUT_STREAM).inc()
        host_id = context.clean_id(subjects.host_id_from_subject(msg.subject))
        with context.bind_from_nats(msg, host_id=host_id, job_id=context.clean_id(job_key(msg.data))):
            try:
                await apply_output(self.runtime, msg.subject, msg.data)
            except Exception:
                log.exception("nats.output_failed", subject=msg.subject, delivered=delivered)
                return delivered >= MAX_DELIVER  # the last delivery is acknowledged: never a poison loop
        return True

    async def _flush(self) -> bool:
        """Store what the batch buffered before acknowledging it (False: keep it unacknowledged)."""
        accumulator = accumulator_of(self.runtime)
        if accumulator is None:
            return True
        try:
            await accumulator.flush()
        except Exception:
            log.exception("nats.output_flush_failed")
            return False
        return True
