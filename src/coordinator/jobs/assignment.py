"""The AssignJob of one assignment, built with the protocol's `build_assign_job` (island-protocol §4.5)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from coordinator.jobs import repository as sql
from coordinator.protocol.codec import ProtocolError
from coordinator.protocol.messages import AssignJob, build_assign_job
from coordinator.runtime import Runtime
from coordinator.workloads.rules import sandbox_tier


def assign_job_message(
    row: Any, lease_expires_at: datetime, supported_runtimes: tuple[str, ...] | list[str]
) -> AssignJob:
    """The AssignJob for a claimed job row (jobs ⋈ workloads) sent to an Island with these runtimes.

    Raises `ProtocolError` when no AssignJob could make the Island run the Cargo as intended (a Cargo
    without its image or module, or a runtime the Island does not list)."""
    return build_assign_job(
        job_id=str(row.id),
        workload_id=int(row.workload_id),
        input=row.input,
        lease_expires_ms=int(lease_expires_at.timestamp() * 1000),
        workload_runtime=row.runtime,
        supported_runtimes=supported_runtimes,
        sandbox_tier=sandbox_tier(int(row.trust_level)),
        container_image=row.container_image,
        image_digest=row.image_digest,
        wasm_url=row.wasm_url,
        wasm_hash=row.wasm_hash,
        model_url=row.model_url,
        model_hash=row.model_hash,
        onnx_task_type=row.onnx_task_type or ("text-classification" if row.runtime == "onnx" else None),
    )


async def still_assigned(
    runtime: Runtime, host_id: uuid.UUID, supported_runtimes: tuple[str, ...] | list[str]
) -> list[AssignJob]:
    """The AssignJob of every job bound to the Island and not yet started (a socket that dropped after
    the push and came back gets them again; a started job the Island already has)."""
    async with runtime.db.read() as session:
        rows = (await session.execute(sql.ASSIGNED_TO_HOST_SQL, {"host_id": host_id})).all()
    out = []
    for row in rows:
        try:
            out.append(assign_job_message(row, row.lease_expires_at, supported_runtimes))
        except ProtocolError:
            continue  # the dispatcher fails such a job; nothing to resend
    return out
