"""The precondition of a success: the job's output is gap-free up to its final chunk (issue 18).

Status and output travel on different streams, so a success may be processed before its last chunks.
A success whose output still has a hole, or no final chunk, `output_gap_grace_seconds` after it was
first seen (enough for JOB_OUTPUT to redeliver what a dead replica never stored) is not stored as a
silently truncated success: it fails with this reason, and the failure refunds the consumer as every
failure does. Within the grace, a transport that can redeliver (the JOB_STATUS consumer sets
`redeliverable`) gets `OutputPending` and retries the status later, so waiting holds no consumer slot;
others (the Island channel) wait in place."""

from __future__ import annotations

import asyncio
import contextvars
import time
import uuid

from coordinator.jobs.events import JobRef
from coordinator.runtime import Runtime

INCOMPLETE_OUTPUT = "Output incomplete: chunks are missing before the final one"
# Set by a transport that redelivers a status it could not apply yet (nats/status_consumer.py).
redeliverable: contextvars.ContextVar[bool] = contextvars.ContextVar("redeliverable", default=False)
_first_seen: dict[uuid.UUID, float] = {}
_REMEMBER = 10_000


class OutputPending(Exception):
    """The success's output is not complete yet: apply the status again later."""


async def incomplete_output(runtime: Runtime, job: JobRef) -> str | None:
    """None when the job may succeed; otherwise the reason it fails instead (or `OutputPending`). A sink
    that does not track sequence (the basic one: output stored by seq) does not hold a success back."""
    complete = getattr(runtime.output, "output_complete", None)
    if complete is None:
        return None
    if len(_first_seen) > _REMEMBER:
        _first_seen.clear()
    deadline = (
        _first_seen.setdefault(job.job_id, time.monotonic()) + runtime.settings.output_gap_grace_seconds
    )
    while not await complete(job):
        if time.monotonic() >= deadline:
            _first_seen.pop(job.job_id, None)
            return INCOMPLETE_OUTPUT
        if redeliverable.get():
            raise OutputPending(str(job.job_id))
        await asyncio.sleep(0.1)
    _first_seen.pop(job.job_id, None)
    return None
