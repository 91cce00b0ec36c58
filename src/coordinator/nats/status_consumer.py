"""The JOB_STATUS durable pull consumer: `host.*.status` → job transitions, shared by every replica.

Each message is acknowledged once applied (a duplicate changes nothing). A malformed one is acknowledged,
logged and counted. A transient failure (database down) is redelivered a bounded number of times."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import structlog
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig

from coordinator.nats.job_bus import ensure_job_streams
from coordinator.nats.job_handler import Malformed, _str, decode, intake_of
from coordinator.protocol import subjects
from coordinator.runtime import Runtime
from coordinator.supervisor import Child
from coordinator.telemetry import metrics

log = structlog.get_logger(__name__)

MAX_DELIVER = 10
BATCH = 100


async def apply_status(runtime: Runtime, subject: str, payload: bytes) -> None:
    """Apply one JobStatus; raises only on a transient failure worth a redelivery."""
    metrics.nats_messages.labels(subject_class="status").inc()
    try:
        host_id, _, data = decode(subject, payload)
        state = _str(data, "state")
        error = data.get("error")
        if error is not None and not isinstance(error, str):
            raise Malformed("error must be a string")
        if not await intake_of(runtime).status(host_id, data["job_id"], state, error):
            raise Malformed(f"unknown state {state!r}")
    except Malformed as exc:
        metrics.nats_malformed.labels(subject_class="status").inc()
        log.warning("nats.malformed", subject=subject, error=str(exc))


class StatusConsumerChild(Child):
    name = "status_consumer"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def run(self, ready: Callable[[], None]) -> None:
        nc = self.runtime.nats
        if nc is None:
            raise RuntimeError("NATS is not connected")
        js = nc.jetstream()
        await ensure_job_streams(js)
        psub = await js.pull_subscribe(
            subjects.STATUS_SUBJECTS,
            durable=subjects.STATUS_CONSUMER,
            stream=subjects.STATUS_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_deliver=MAX_DELIVER),
        )
        ready()
        try:
            while True:
                try:
                    msgs = await psub.fetch(BATCH, timeout=1)
                except (TimeoutError, NatsTimeout):
                    continue
                for msg in msgs:
                    await self._process(msg)
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def _process(self, msg: Any) -> None:
        delivered = msg.metadata.num_delivered
        if delivered > 1:
            metrics.nats_redeliveries.labels(stream=subjects.STATUS_STREAM).inc()
        try:
            await apply_status(self.runtime, msg.subject, msg.data)
        except Exception:
            log.exception("nats.status_failed", subject=msg.subject, delivered=delivered)
            if delivered < MAX_DELIVER:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=1)
                return
        with contextlib.suppress(Exception):
            await msg.ack()
