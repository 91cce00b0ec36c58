"""The AssignJob of one assignment, built with the protocol's `build_assign_job` (island-protocol §4.5)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from coordinator.protocol.messages import AssignJob, build_assign_job
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
