"""The interfaces between job lifecycle and its neighbours: the output sink and the Island bus."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from coordinator.protocol.messages import AssignJob


@dataclass(frozen=True)
class JobRef:
    """What every consumer of job events needs to know about a job, without loading the row again."""

    job_id: uuid.UUID
    user_id: int
    workload_id: int
    workload_kind: str  # chat, image, classification, generic
    runtime: str  # container, wasm, llmcpp, onnx, diffusers, coreml
    host_id: uuid.UUID | None
    created_at: datetime
    # The replica producing the job's events, when known without a look-up (see nats.stream_router).
    stream_owner: str | None = None
    # Characters of the job's system prompt and prompt (`repository.prompt_chars_sql`), for the
    # prompt-token estimate.
    prompt_chars: int | None = None
    # The job's first assignment: it has no stored events yet (the stream starts at position 1).
    new_stream: bool = False


@dataclass(frozen=True)
class OutputResult:
    """A job's assembled result as its stream owner holds it: the output, the usage counted from the
    stream (token counts merged over what the Island reported), and whether the output is complete (the
    final chunk with nothing missing before it, or the image). The terminal move stores it."""

    output: str | None
    usage: dict[str, Any]
    complete: bool


@runtime_checkable
class OutputSink(Protocol):
    """Receives every accepted event of a job, in arrival order, from the job handler.

    The job handler has already checked that the sender is the Island the job is assigned to. The sink
    orders chunks by the runtime's `seq` conventions, persists them (`job_events`), assembles the
    result (`result`, which the terminal move stores in its transaction: the sink never writes the jobs
    row) and broadcasts on topic `job:{id}`. `on_status` and `on_terminal` are called after the
    corresponding state transition has committed; `on_terminal` exactly once per job."""

    async def on_output(self, job: JobRef, seq: int, chunk: str, is_final: bool) -> None: ...

    async def on_progress(self, job: JobRef, step: int, total: int) -> None: ...

    async def on_image(
        self, job: JobRef, image_data: str, format: str, width: int, height: int, seed: int | None
    ) -> None: ...

    async def on_status(self, job: JobRef, public_status: str) -> None: ...

    async def result(self, job: JobRef, wait: float) -> OutputResult:
        """The job's result, once complete or after `wait` seconds (status can overtake output)."""
        ...

    async def on_terminal(
        self, job: JobRef, state: str, error: str | None, usage: dict[str, Any] | None, credits: float
    ) -> None:
        """The job ended (committed): its last events. `usage` is what the row stores, `credits` what
        the job cost its consumer."""
        ...


class UndeliverableAssignment(Exception):
    """An AssignJob the bus can never carry (larger than its payload limit): retrying cannot help."""


@runtime_checkable
class JobBus(Protocol):
    """Messages to Islands and to other coordinator replicas (implemented over NATS by the transport)."""

    async def publish_assignment(self, host_id: uuid.UUID, job: AssignJob, msg_id: str) -> None:
        """Store an AssignJob on JetStream `host.<id>.jobs`; `msg_id` de-duplicates a repeated publish.
        Raises `UndeliverableAssignment` for a message no retry can deliver."""
        ...

    async def publish_cancel(self, host_id: uuid.UUID, job_id: uuid.UUID) -> None: ...

    async def purge_host_jobs(self, host_id: uuid.UUID) -> None:
        """Drop the AssignJob messages still stored for an Island (it would replay them on return)."""
        ...

    async def wake_dispatchers(self) -> None:
        """Tell every replica's dispatcher that work or capacity appeared."""
        ...
