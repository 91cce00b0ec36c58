"""The Job object of the client API (client-api §3.2): public status only, numbers as numbers."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from coordinator.jobs import rules
from coordinator.jobs.models import Job
from coordinator.jobs.output_assembly import TOKEN_SOURCES


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def credits_used(job: Job) -> float:
    """What the job costs the consumer so far: the charge minus what was refunded."""
    return rules.credits_used(job.budget, job.charged, job.settled_at)


def usage_of(job: Job, credits: Decimal | None = None) -> dict[str, Any]:
    """The Job's `usage`; `credits` overrides what the job itself carries (a batch parent's children's)."""
    usage: dict[str, Any] = {}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = (job.usage or {}).get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            usage[key] = value
    if "total_tokens" not in usage and ("prompt_tokens" in usage or "completion_tokens" in usage):
        usage["total_tokens"] = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
    usage["credits_used"] = credits_used(job) if credits is None else float(max(Decimal(0), credits))
    if (job.usage or {}).get("tokens_source") in TOKEN_SOURCES:
        usage["tokens_source"] = (job.usage or {})["tokens_source"]
    return usage


def duration_ms(job: Job) -> int | None:
    if job.started_at is None or job.completed_at is None:
        return None
    return max(0, int((job.completed_at - job.started_at).total_seconds() * 1000))


def public_job(
    job: Job, workload_slug: str, *, queue_position: int | None = None, credits: Decimal | None = None
) -> dict[str, Any]:
    """The Job object; a batch parent passes its children's `credits` and starts when it is created."""
    started_at = job.started_at
    if started_at is None and job.batch_config is not None:
        started_at = job.created_at
    body: dict[str, Any] = {
        "id": str(job.id),
        "workload_id": job.workload_id,
        "workload_slug": workload_slug,
        "status": rules.public_status(job.state),
        "input": job.input if isinstance(job.input, dict) else {},
        "output": job.output,
        "error": job.error,
        "created_at": _iso(job.created_at),
        "started_at": _iso(started_at),
        "completed_at": _iso(job.completed_at),
        "duration_ms": duration_ms(job),
        "usage": usage_of(job, credits),
        "priority": job.priority,
        "attempt": job.attempt,
        "budget": float(job.budget),
        "placement": job.placement,
    }
    if job.state == rules.QUEUED and queue_position is not None:
        body["queue_position"] = queue_position
    return body
