"""A positive signal that the coordinator has handled a status report: the JOB_STATUS consumer has
acknowledged it (the consumer acks after the handler ran), instead of a fixed sleep before asserting that a
late or malformed report changed nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from coordinator.protocol import subjects


async def publish_status(nc: Any, host_id: str, payload: bytes) -> int:
    """Publish on `host.<id>.status` as an Island does; returns the report's JOB_STATUS sequence."""
    ack = await nc.jetstream().publish(f"host.{host_id}.status", payload)
    return int(ack.seq)


async def handled(nc: Any, seq: int, within: float = 10.0) -> None:
    """Wait until every JOB_STATUS report up to `seq` is handled and acknowledged (none waiting for
    redelivery); fail after `within` seconds."""
    js = nc.jetstream()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        info = await js.consumer_info(subjects.STATUS_STREAM, subjects.STATUS_CONSUMER)
        if info.ack_floor.stream_seq >= seq and info.num_ack_pending == 0 and not info.num_redelivered:
            return
        if loop.time() > deadline:
            raise AssertionError(f"status report {seq} not handled within {within}s: {info}")
        await asyncio.sleep(0.05)
