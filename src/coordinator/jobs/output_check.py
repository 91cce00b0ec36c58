"""The precondition of a success: the job's output is gap-free up to its final chunk (issue 18).

Status and output travel on different streams, so a success may be processed before its last chunks.
`final_result` asks the stream owner for the job's result, waiting a moment for the last chunks. A success
whose output still has a hole, or no final chunk, is not stored as a silently truncated success: it fails
with `INCOMPLETE_OUTPUT` (the failure refunds the consumer as every failure does) once
`output_gap_grace_seconds` have passed since it was first seen (enough for JOB_OUTPUT to redeliver what a
dead replica never stored) AND this process's JOB_OUTPUT consumer has drained its backlog since then: an
Island publishes its chunks before its status, so while the consumer lags the chunks may still be on their
way, and an overloaded coordinator must turn slowness into latency, not into failures. `GIVE_UP_SECONDS`
bounds the wait. Meanwhile a transport that can redeliver (the JOB_STATUS consumer sets `redeliverable`)
gets `OutputPending` and retries the status later, so waiting holds no consumer slot; others (the Island
channel) wait in place."""

from __future__ import annotations

import contextvars
import time
import uuid

from coordinator.jobs.events import JobRef, OutputResult
from coordinator.runtime import Runtime

INCOMPLETE_OUTPUT = "Output incomplete: chunks are missing before the final one"
# Set by a transport that redelivers a status it could not apply yet (nats/status_consumer.py).
redeliverable: contextvars.ContextVar[bool] = contextvars.ContextVar("redeliverable", default=False)
# How long one ask waits on the stream owner for the last chunks (normally milliseconds behind): in place,
# and before a redeliverable status is handed back.
WAIT_SECONDS = 0.25
REDELIVERABLE_WAIT_SECONDS = 0.1
# A success never waits longer than this for its output, lagging consumer or not.
GIVE_UP_SECONDS = 60.0
_first_seen: dict[uuid.UUID, float] = {}
_REMEMBER = 10_000


class OutputPending(Exception):
    """The success's output is not complete yet: apply the status again later."""


def given_up(first_seen: float, now: float, grace: float, drained_at: float | None) -> bool:
    """Whether the missing chunks of a success first seen at `first_seen` can no longer arrive: the
    grace is over and the output consumer (if this process runs one) drained its backlog since."""
    if now >= first_seen + GIVE_UP_SECONDS:
        return True
    if now < first_seen + grace:
        return False
    return drained_at is None or drained_at > first_seen


async def final_result(runtime: Runtime, job: JobRef) -> tuple[OutputResult, str | None]:
    """The result a success stores, and None; or the result so far and the reason the job fails instead.
    Raises `OutputPending` while the chunks may still come, when the transport can redeliver the status."""
    if len(_first_seen) > _REMEMBER:
        _first_seen.clear()
    first = _first_seen.setdefault(job.job_id, time.monotonic())
    while True:
        quick = redeliverable.get()
        result = await runtime.output.result(job, REDELIVERABLE_WAIT_SECONDS if quick else WAIT_SECONDS)
        grace, drained = runtime.settings.output_gap_grace_seconds, runtime.output_drained_at
        if result.complete or given_up(first, time.monotonic(), grace, drained):
            _first_seen.pop(job.job_id, None)
            return result, None if result.complete else INCOMPLETE_OUTPUT
        if quick:
            raise OutputPending(str(job.job_id))
