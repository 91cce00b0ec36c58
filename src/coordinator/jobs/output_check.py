"""The precondition of a success: the job's output is gap-free up to its final chunk (issue 18).

Status and output travel on different streams, so a success may be processed before its last chunks.
A success whose output still has a hole, or no final chunk, after `output_gap_grace_seconds` (enough
for JOB_OUTPUT to redeliver what a dead replica never stored) is not stored as a silently truncated
success: it fails with this reason, and the failure refunds the consumer as every failure does."""

from __future__ import annotations

import asyncio
import time

from coordinator.jobs.effects import output_of
from coordinator.jobs.events import JobRef
from coordinator.runtime import Runtime

INCOMPLETE_OUTPUT = "Output incomplete: chunks are missing before the final one"


async def incomplete_output(runtime: Runtime, job: JobRef) -> str | None:
    """None when the job may succeed; otherwise the reason it fails instead. A sink that does not track
    sequence (the basic one: no streaming, output stored by seq) does not hold a success back."""
    complete = getattr(output_of(runtime), "output_complete", None)
    if complete is None:
        return None
    deadline = time.monotonic() + runtime.settings.output_gap_grace_seconds
    while not await complete(job):
        if time.monotonic() >= deadline:
            return INCOMPLETE_OUTPUT
        await asyncio.sleep(0.1)
    return None
