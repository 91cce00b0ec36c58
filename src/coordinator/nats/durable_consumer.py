"""What the `JOB_STATUS` and `JOB_OUTPUT` consumers share: a supervised loop over one durable pull
consumer that long-polls for one message, then drains whatever is already waiting, and hands each batch
over grouped by job (one job's messages in stream order, different jobs concurrently)."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig

from coordinator.loops import LoopService
from coordinator.nats.streams import ensure_streams
from coordinator.runtime import Runtime

LONG_POLL_SECONDS = 5.0


def job_key(payload: bytes) -> str | None:
    """The job a message is about, for ordering (None when unparsable: handled on its own)."""
    try:
        data = orjson.loads(payload)  # depth-limited: deep nesting is a decode error, not a RecursionError
    except ValueError:
        return None
    job_id = data.get("job_id") if isinstance(data, dict) else None
    return job_id if isinstance(job_id, str) else None


def by_job(msgs: list[Any]) -> list[list[Any]]:
    """The batch's messages per job, each job's in stream order (an unparsable message alone)."""
    groups: dict[str, list[Any]] = {}
    for index, msg in enumerate(msgs):
        groups.setdefault(job_key(msg.data) or f"#{index}", []).append(msg)
    return list(groups.values())


async def fetch(psub: Any, batch: int, wait: float) -> list[Any]:
    """Up to `batch` messages, waiting at most `wait` seconds (none: an empty list)."""
    try:
        msgs: list[Any] = await psub.fetch(batch, timeout=wait)
    except (TimeoutError, NatsTimeout):
        return []
    return msgs


class DurableConsumer(LoopService):
    """A subclass names its stream, subjects and consumer, and applies a batch in `process_batch`."""

    interval = 0.0  # the long poll is the wait
    after_error = 1.0  # e.g. the connection is down: do not spin
    stream: str
    filter_subjects: str
    durable: str
    batch: int
    drain_wait: float  # how long a drain fetch waits for more (a batch long-poll would wait to fill)

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime
        self._psub: Any = None

    def consumer_config(self) -> ConsumerConfig:
        raise NotImplementedError

    async def process_batch(self, msgs: list[Any]) -> None:
        raise NotImplementedError

    async def setup(self) -> None:
        nc = self.runtime.nats
        if nc is None:
            raise RuntimeError("NATS is not connected")
        js = nc.jetstream()
        await ensure_streams(js, self.runtime.settings.nats_stream_replicas)
        self._psub = await js.pull_subscribe(
            self.filter_subjects, durable=self.durable, stream=self.stream, config=self.consumer_config()
        )

    async def run_once(self) -> None:
        msgs = await fetch(self._psub, 1, LONG_POLL_SECONDS)
        while msgs:
            await self.process_batch(msgs)
            msgs = await fetch(self._psub, self.batch, self.drain_wait)

    async def drain(self) -> None:
        """No wait for the long poll: a message fetched and not yet acked is delivered again."""

    async def teardown(self) -> None:
        if self._psub is not None:
            psub, self._psub = self._psub, None
            with contextlib.suppress(Exception):
                await psub.unsubscribe()
