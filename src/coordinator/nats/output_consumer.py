"""The JOB_OUTPUT durable pull consumer: `host.*.output` → the job's output stream, shared by every
replica (issue 18). Island output is a core publish captured by the `JOB_OUTPUT` stream, so chunks sent
while a coordinator is down, restarting or cut off from PostgreSQL wait in the stream.

A batch is applied (one job's chunks in stream order, different jobs concurrently) and acknowledged once
this replica's output buffer has been stored in PostgreSQL by the accumulator's next flush (the batches
of a gather interval share it; the consumer fetches on meanwhile): a replica killed before the flush
leaves its chunks unacknowledged, and they are redelivered (to a restarted or another replica)
after `ack_wait`. A duplicate changes nothing (the assembly drops a seq it has). A malformed message is
acknowledged, logged and counted; a transient failure is redelivered a bounded number of times."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from coordinator.jobs.intake import apply_job_message
from coordinator.jobs.output import accumulator_of
from coordinator.nats.durable_consumer import DurableConsumer, by_job, job_key
from coordinator.nats.job_handler import sender
from coordinator.nats.streams import delivery_count
from coordinator.protocol import subjects
from coordinator.protocol.codec import ProtocolError
from coordinator.runtime import Runtime
from coordinator.telemetry import context, metrics

log = structlog.get_logger(__name__)

MAX_DELIVER = 20
ACK_WAIT_SECONDS = 3.0
BATCH = 200
CONCURRENCY = 8
_OUTPUT_MESSAGES = metrics.nats_messages.labels(subject_class="output")  # (a label look-up per chunk: 2 µs)


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
    _OUTPUT_MESSAGES.inc()
    try:
        await apply_job_message(runtime, sender(subject), "output", payload)
    except ProtocolError as exc:
        metrics.nats_malformed.labels(subject_class="output").inc()
        log.warning("nats.malformed", subject=subject, error=str(exc))


class OutputConsumerChild(DurableConsumer):
    """Consumes `JOB_OUTPUT` with the shared durable pull consumer: each pass long-polls, then drains."""

    name = "output_consumer"
    stream = subjects.OUTPUT_STREAM
    filter_subjects = subjects.OUTPUT_SUBJECTS
    durable = subjects.OUTPUT_CONSUMER
    batch = BATCH
    drain_wait = 0.02

    def consumer_config(self) -> ConsumerConfig:
        return output_consumer_config()

    async def run_once(self) -> None:
        await super().run_once()  # returns once a fetch finds nothing more: everything before is applied
        self.runtime.output_drained_at = time.monotonic()

    async def teardown(self) -> None:
        self.runtime.output_drained_at = None
        await super().teardown()

    async def process_batch(self, msgs: list[Any]) -> None:
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

        await asyncio.gather(*(in_order(group) for group in by_job(msgs)))

        async def acknowledge() -> None:
            for msg in applied:
                with contextlib.suppress(Exception):
                    await msg.ack()

        accumulator = accumulator_of(self.runtime)
        if accumulator is None:
            await acknowledge()
        else:  # once stored by the accumulator's next (gathered) flush; the next fetch need not wait
            accumulator.when_stored(acknowledge)

    async def _apply(self, msg: Any) -> bool:
        """True once applied (or malformed: nothing to retry); False on a transient failure."""
        delivered = delivery_count(msg)
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
