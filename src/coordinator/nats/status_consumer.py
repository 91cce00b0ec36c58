"""The JOB_STATUS durable pull consumer: `host.*.status` → job transitions, shared by every replica.

Each message is acknowledged once applied (a duplicate changes nothing). A malformed one is acknowledged,
logged and counted. A transient failure (database down) is redelivered a bounded number of times."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import structlog
from nats.js.api import ConsumerConfig

from coordinator.jobs import rules
from coordinator.jobs.intake import apply_status_message
from coordinator.jobs.output_check import OutputPending, redeliverable
from coordinator.nats.durable_consumer import DurableConsumer, by_job, job_key
from coordinator.nats.job_handler import sender
from coordinator.nats.streams import STATUS_MAX_DELIVER, delivery_count, status_consumer_config
from coordinator.protocol import subjects
from coordinator.protocol.codec import ProtocolError
from coordinator.protocol.reports import parse_status
from coordinator.runtime import Runtime
from coordinator.telemetry import context, metrics

log = structlog.get_logger(__name__)

MAX_DELIVER = STATUS_MAX_DELIVER
BATCH = 100
CONCURRENCY = 8
_STATUS_MESSAGES = metrics.nats_messages.labels(subject_class="status")


async def apply_status(runtime: Runtime, subject: str, payload: bytes) -> None:
    """Apply one JobStatus; raises only on a transient failure worth a redelivery."""
    try:
        await apply_status_message(runtime, sender(subject), payload)
    except ProtocolError as exc:
        metrics.nats_malformed.labels(subject_class="status").inc()
        log.warning("nats.malformed", subject=subject, error=str(exc))


class StatusConsumerChild(DurableConsumer):
    """Consumes `JOB_STATUS` with the durable pull consumer: each pass long-polls, then drains."""

    name = "status_consumer"

    stream = subjects.STATUS_STREAM
    filter_subjects = subjects.STATUS_SUBJECTS
    durable = subjects.STATUS_CONSUMER
    batch = BATCH
    drain_wait = 0.05

    def consumer_config(self) -> ConsumerConfig:
        return status_consumer_config()

    async def process_batch(self, msgs: list[Any]) -> None:
        """Messages of one job in order; different jobs concurrently (bounded by the pool). The jobs whose
        first message here is a start are started together first, in one statement."""
        groups = by_job(msgs)
        leading = [(group[0], report) for group in groups if (report := _start_report(group[0]))]
        if leading:
            await self._start_together(leading)
        first_done = {id(msg) for msg, _ in leading}
        gate = asyncio.Semaphore(CONCURRENCY)

        async def in_order(group: list[Any]) -> None:
            async with gate:
                for msg in group:
                    if id(msg) not in first_done:
                        await self._process(msg)

        await asyncio.gather(*(in_order(group) for group in groups))

    async def _start_together(self, leading: list[tuple[Any, tuple[uuid.UUID, str]]]) -> None:
        for msg, _ in leading:
            _count(msg)
        try:
            await self.runtime.job_intake.starts([report for _, report in leading])
        except Exception:
            log.exception("nats.status_failed", subject=leading[0][0].subject, messages=len(leading))
            await asyncio.gather(*(_retry(msg) for msg, _ in leading))
            return
        await asyncio.gather(*(_ack(msg) for msg, _ in leading))

    async def _process(self, msg: Any) -> None:
        delivered = _count(msg)
        host_id = context.clean_id(subjects.host_id_from_subject(msg.subject))
        with context.bind_from_nats(msg, host_id=host_id, job_id=context.clean_id(job_key(msg.data))):
            try:
                redeliverable.set(delivered < MAX_DELIVER)
                await apply_status(self.runtime, msg.subject, msg.data)
            except OutputPending:
                # Its output is still arriving: ask again later, less often the longer it takes.
                with contextlib.suppress(Exception):
                    await msg.nak(delay=min(2 ** (delivered - 1), 8))
                return
            except Exception:
                log.exception("nats.status_failed", subject=msg.subject, delivered=delivered)
                await _retry(msg)
                return
        await _ack(msg)


def _start_report(msg: Any) -> tuple[uuid.UUID, str] | None:
    """(sender, job id) of a well-formed `started`/`streaming` report; None for any other message (the
    one-by-one path applies it, and counts and logs it if malformed)."""
    try:
        status = parse_status(msg.data)
        host_id = sender(msg.subject)
    except ProtocolError:
        return None
    return (host_id, status.job_id) if rules.island_state(status.state) == rules.RUNNING else None


def _count(msg: Any) -> int:
    """Count a message taken (and a redelivery); its delivery count."""
    delivered = delivery_count(msg)
    _STATUS_MESSAGES.inc()
    if delivered > 1:
        metrics.nats_redeliveries.labels(stream=subjects.STATUS_STREAM).inc()
    return delivered


async def _retry(msg: Any) -> None:
    """A transient failure: redelivered a little later, unless its deliveries are used up (dropped)."""
    if delivery_count(msg) < MAX_DELIVER:
        with contextlib.suppress(Exception):
            await msg.nak(delay=1)
        return
    await _ack(msg)


async def _ack(msg: Any) -> None:
    with contextlib.suppress(Exception):
        await msg.ack()
