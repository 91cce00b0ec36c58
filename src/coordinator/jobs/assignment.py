"""The AssignJob message of one assignment (island-protocol §4.5): field order, types and runtime fields."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from coordinator.workloads.rules import sandbox_tier


def _absolute(url: str | None, base_url: str) -> str | None:
    # The Island treats anything that is not http(s) as a local path, so coordinator-hosted artefacts
    # (stored as "/cargos/x.wasm") must be sent as absolute URLs.
    if url and url.startswith("/"):
        return base_url.rstrip("/") + url
    return url


def assign_job_message(row: Any, lease_expires_at: datetime, base_url: str) -> dict[str, Any]:
    """The AssignJob fields for a claimed job row (jobs ⋈ workloads), absent keys left out.

    `job_id` is a string, `workload_id` an integer (Islands ≥ 0.3.2), `lease_expires` integer epoch ms,
    `runtime_type` always present (never null), `container_image` always sent for container Cargos."""
    runtime = row.runtime
    message: dict[str, Any] = {
        "job_id": str(row.id),
        "workload_id": int(row.workload_id),
        "input": row.input,
        "lease_expires": int(lease_expires_at.timestamp() * 1000),
        "runtime_type": runtime,
    }
    if runtime not in ("wasm", "llmcpp", "onnx", "diffusers"):
        message["container_image"] = row.container_image or "ghcr.io/archipelag-io/llm-chat:latest"
        if row.image_digest:
            message["image_digest"] = row.image_digest
    if runtime == "wasm":
        message["wasm_url"] = _absolute(row.wasm_url, base_url)
        if row.wasm_hash:
            message["wasm_hash"] = row.wasm_hash
    if runtime in ("llmcpp", "diffusers") and row.model_url:
        message["model_url"] = _absolute(row.model_url, base_url)
        if row.model_hash:
            message["model_hash"] = row.model_hash
    if runtime == "onnx":
        message["onnx_model_url"] = _absolute(row.model_url, base_url)
        if row.model_hash:
            message["onnx_model_hash"] = row.model_hash
        message["onnx_task_type"] = row.onnx_task_type or "text-classification"
    message["sandbox_tier"] = sandbox_tier(int(row.trust_level))
    return {k: v for k, v in message.items() if v is not None or k == "input"}


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
