"""Small after-commit helpers of the jobs context: a transition's JobRef and best-effort messages.

They sit apart from `service.py` so that the lifecycle engine and its hooks can use them without
importing the service that calls them (no import circle). The process's components themselves are
typed attributes of `Runtime`."""

from __future__ import annotations

import uuid
from typing import Any

import structlog

from coordinator.jobs.events import JobRef
from coordinator.jobs.hooks import TransitionResult
from coordinator.runtime import Runtime

log = structlog.get_logger(__name__)


async def job_ref(runtime: Runtime, result: TransitionResult) -> JobRef:
    """A JobRef for a transition, with the Cargo's kind and runtime from the per-process cache."""
    cargo = await runtime.catalogue.by_id(runtime.db, result.workload_id)
    return JobRef(
        job_id=result.job_id,
        user_id=result.user_id,
        workload_id=result.workload_id,
        workload_kind=cargo.kind,
        runtime=cargo.runtime,
        host_id=result.host_id or result.released_host_id,
        created_at=result.created_at,
        stream_owner=result.stream_owner,
        prompt_chars=result.prompt_chars,
    )


async def best_effort(awaitable: Any, what: str, job_id: uuid.UUID) -> None:
    """A best-effort message after commit: the durable state is already right if it fails."""
    try:
        await awaitable
    except Exception as exc:
        log.warning("jobs.bus_failed", what=what, job_id=str(job_id), error=repr(exc))
