"""After-commit hooks of job transitions: settle, karma, broadcast, metrics, run once the row is durable."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import structlog

from coordinator.jobs.batch_rules import BatchStep

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TransitionResult:
    """One applied move of one job (from_state None means the job was just submitted)."""

    job_id: uuid.UUID
    user_id: int
    workload_id: int
    from_state: str | None
    to_state: str
    host_id: uuid.UUID | None
    attempt: int
    created_at: datetime
    error: str | None = None
    usage: dict[str, Any] | None = None
    # The Island the job just left (requeue, terminal): its capacity is free again.
    released_host_id: uuid.UUID | None = None
    # The replica producing the job's events, when the transition already knows it (the dispatcher's).
    stream_owner: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The move of `jobs/moves.py` that was applied, and the Island that reported it (None: the
    # coordinator decided, e.g. a cancel, a timeout or a dead-letter).
    move: str = ""
    reported_by: uuid.UUID | None = None
    # What the job cost its consumer once the move settled it (`rules.credits_used`); None before.
    credits: float | None = None
    # Moves applied in the same transaction as a consequence (a batch parent closed by its last child's
    # end), and the batch's next step after commit (inputs to submit, children to cancel).
    then: tuple[TransitionResult, ...] = ()
    batch: BatchStep | None = None
    # The consumer's balance after the move's charge or refund (None when it moved no money).
    balance: Decimal | None = None
    # An assignment's prompt length (`jobs.events.JobRef.prompt_chars`).
    prompt_chars: int | None = None


Hook = Callable[[TransitionResult], Awaitable[None]]


class HookRegistry:
    """Callables run, in registration order, after a transition's transaction has committed.

    A failing hook is logged and does not stop the others: the transition itself is already durable,
    and the durable backstops (workers) repair what a lost hook would have done."""

    def __init__(self) -> None:
        self._hooks: list[Hook] = []

    def register(self, hook: Hook) -> Hook:
        if hook not in self._hooks:
            self._hooks.append(hook)
        return hook

    def unregister(self, hook: Hook) -> None:
        if hook in self._hooks:
            self._hooks.remove(hook)

    async def run(self, result: TransitionResult) -> None:
        for hook in list(self._hooks):
            try:
                await hook(result)
            except Exception:
                log.exception(
                    "jobs.hook_failed",
                    hook=getattr(hook, "__qualname__", repr(hook)),
                    job_id=str(result.job_id),
                )
