"""The JOB_STATUS durable pull consumer: `host.*.status` → job transitions, shared by every replica.

Each message is acknowledged once applied (a duplicate changes nothing). A malformed one is acknowledged,
logged and counted. A transient failure (database down) is redelivered a bounded number of times."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
import structlog
from nats.errors import TimeoutError as NatsTimeout

from coordinator.jobs.intake import apply_status_message
from coordinator.jobs.output_check import OutputPending, redeliverable
from coordinator.loops import LoopService
from coordinator.nats.job_handler import sender
from coordinator.nats.streams import STATUS_MAX_DELIVER, ensure_streams, status_consumer_config
from coordinator.protocol import subjects
from coordinator.protocol.codec import ProtocolError
from coordinator.runtime import Runtime
from coordinator.telemetry import context, metrics

log = structlog.get_logger(__name__)

MAX_DELIVER = STATUS_MAX_DELIVER
BATCH = 100
LONG_POLL_SECONDS = 5.0
CONCURRENCY = 8


def job_key(payload: bytes) -> str | None:
    """The job a status message is about, for ordering (None when unparsable: handled on its own)."""
    try:
        data = orjson.loads(payload)  # depth-limited: deep nesting is a decode error, not a RecursionError
    except ValueError:
        return None
    job_id = data.get("job_id") if isinstance(data, dict) else None
    return job_id if isinstance(job_id, str) else None


async def apply_status(runtime: Runtime, subject: str, payload: bytes) -> None:
    """Apply one JobStatus; raises only on a transient failure worth a redelivery."""
    metrics.nats_messages.labels(subject_class="status").inc()
    try:
        await apply_status_message(runtime, sender(subject), payload)
    except ProtocolError as exc:
        metrics.nats_malformed.labels(subject_class="status").inc()
        log.warning("nats.malformed", subject=subject, error=str(exc))


class StatusConsumerChild(LoopService):
    """Consumes `JOB_STATUS` with the durable pull consumer: each pass long-polls, then drains."""

    name = "status_consumer"
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
            subjects.STATUS_SUBJECTS,
            durable=subjects.STATUS_CONSUMER,
            stream=subjects.STATUS_STREAM,
            config=status_consumer_config(),
        )

    async def run_once(self) -> None:
        # Long-poll for one message (a batch long-poll would wait for the batch to fill), then drain
        # whatever is already waiting with short no-wait fetches.
        msgs = await self.fetch(self._psub, 1, LONG_POLL_SECONDS)
        while msgs:
            await self._process_batch(msgs)
            msgs = await self.fetch(self._psub, BATCH, 0.05)

    async def drain(self) -> None:
        """No wait for the long poll: a message fetched and not yet acked is delivered again."""

    async def teardown(self) -> None:
        if self._psub is not None:
            psub, self._psub = self._psub, None
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    @staticmethod
    async def fetch(psub: Any, batch: int, wait: float) -> list[Any]:
        """Up to `batch` messages, waiting at most `wait` seconds (none: an empty list)."""
        try:
            msgs: list[Any] = await psub.fetch(batch, timeout=wait)
        except (TimeoutError, NatsTimeout):
            return []
        return msgs

    async def _process_batch(self, msgs: list[Any]) -> None:
        """Messages of one job in order; different jobs concurrently (bounded by the pool)."""
        by_job: dict[str, list[Any]] = {}
        for index, msg in enumerate(msgs):
            by_job.setdefault(job_key(msg.data) or f"#{index}", []).append(msg)
        gate = asyncio.Semaphore(CONCURRENCY)

        async def in_order(group: list[Any]) -> None:
            async with gate:
                for msg in group:
                    await self._process(msg)

        await asyncio.gather(*(in_order(group) for group in by_job.values()))

    async def _process(self, msg: Any) -> None:
        delivered = msg.metadata.num_delivered
        if delivered > 1:
            metrics.nats_redeliveries.labels(stream=subjects.STATUS_STREAM).inc()
        host_id = context.clean_id(subjects.host_id_from_subject(msg.subject))
        with context.bind_from_nats(msg, host_id=host_id, job_id=context.clean_id(job_key(msg.data))):
            try:
                redeliverable.set(delivered < MAX_DELIVER)
                await apply_status(self.runtime, msg.subject, msg.data)
            except OutputPending:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=1)  # its output is still arriving (JOB_OUTPUT redelivers)
                return
            except Exception:
                log.exception("nats.status_failed", subject=msg.subject, delivered=delivered)
                if delivered < MAX_DELIVER:
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=1)
                    return
        with contextlib.suppress(Exception):
            await msg.ack()
