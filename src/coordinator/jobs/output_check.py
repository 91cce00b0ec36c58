"""The precondition of a success: the job's output is gap-free up to its final chunk (issue 18).

Status and output travel on different streams, so a success may be processed before its last chunks.
`final_result` asks the stream owner for the job's result, waiting a moment for the last chunks. A success
whose output still has a hole, or no final chunk, `output_gap_grace_seconds` after it was first seen
(enough for JOB_OUTPUT to redeliver what a dead replica never stored) is not stored as a silently
truncated success: it fails with `INCOMPLETE_OUTPUT`, and the failure refunds the consumer as every
failure does. Within the grace, a transport that can redeliver (the JOB_STATUS consumer sets
`redeliverable`) gets `OutputPending` and retries the status later, so waiting holds no consumer slot;
others (the Island channel) wait in place."""

from __future__ import annotations

import contextvars
import time
import uuid

from coordinator.jobs.events import JobRef, OutputResult
from coordinator.runtime import Runtime

INCOMPLETE_OUTPUT = "Output incomplete: chunks are missing before the final one"
# Set by a transport that redelivers a status it could not apply yet (nats/status_consumer.py).
redeliverable: contextvars.ContextVar[bool] = contextvars.ContextVar("redeliverable", default=False)
# How long one ask waits on the stream owner for the last chunks (normally milliseconds behind).
WAIT_SECONDS = 1.0
_first_seen: dict[uuid.UUID, float] = {}
_REMEMBER = 10_000


class OutputPending(Exception):
    """The success's output is not complete yet: apply the status again later."""


async def final_result(runtime: Runtime, job: JobRef) -> tuple[OutputResult, str | None]:
    """The result a success stores, and None; or the result so far and the reason the job fails instead.
    Raises `OutputPending` within the grace when the transport can redeliver the status."""
    if len(_first_seen) > _REMEMBER:
        _first_seen.clear()
    deadline = (
        _first_seen.setdefault(job.job_id, time.monotonic()) + runtime.settings.output_gap_grace_seconds
    )
    while True:
        left = deadline - time.monotonic()
        result = await runtime.output.result(job, max(0.0, min(WAIT_SECONDS, left)))
        if result.complete or left <= 0:
            _first_seen.pop(job.job_id, None)
            return result, None if result.complete else INCOMPLETE_OUTPUT
        if redeliverable.get():
            raise OutputPending(str(job.job_id))
