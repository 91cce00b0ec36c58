"""Every Island ⇄ coordinator message (island-protocol §4): typed, encoded in the Island's field order,
parsed tolerantly (unknown keys ignored, wrong types → ProtocolError)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coordinator.protocol.codec import (
    Message,
    ProtocolError,
    dumps,
    f32,
    loads_object,
    opt_float,
    opt_int,
    opt_object,
    opt_str,
    req_bool,
    req_int,
    req_str,
    without_none,
)
from coordinator.protocol.heartbeat import (
    CacheStats,
    GpuMetrics,
    Heartbeat,
    PerformanceEstimates,
    SystemMetrics,
    parse_heartbeat,
)
from coordinator.protocol.reports import (
    ISLAND_STATES,
    JobImage,
    JobOutput,
    JobProgress,
    JobStatus,
    LeaseRenewal,
    parse_image,
    parse_lease,
    parse_output,
    parse_progress,
    parse_status,
)
from coordinator.protocol.runtimes import can_run, cargo_runtime

# Every message type and parser is importable from here (heartbeat and job reports live in their modules).
__all__ = [
    "ISLAND_STATES",
    "AssignJob",
    "CacheStats",
    "CancelJob",
    "Capabilities",
    "GpuMetrics",
    "Heartbeat",
    "JobImage",
    "JobOutput",
    "JobProgress",
    "JobStatus",
    "LeaseRenewal",
    "Message",
    "PairingRequest",
    "PairingResponse",
    "PerformanceEstimates",
    "PreloadRecommendation",
    "ProtocolError",
    "RegisterHost",
    "SystemMetrics",
    "build_assign_job",
    "choose_runtime_type",
    "dumps",
    "parse_assign_job",
    "parse_cancel",
    "parse_heartbeat",
    "parse_image",
    "parse_lease",
    "parse_output",
    "parse_pairing_request",
    "parse_pairing_response",
    "parse_preload",
    "parse_progress",
    "parse_register",
    "parse_status",
]


# --- registration and pairing (§4.1, §4.2) ----------------------------------------------------------------


@dataclass
class Capabilities(Message):
    gpu_model: str | None = None
    gpu_vram_mb: int | None = None
    cpu_cores: int = 0
    ram_mb: int = 0
    region: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # Every key always present: the Island's Options without skip serialise as null.
        return {
            "gpu_model": self.gpu_model,
            "gpu_vram_mb": self.gpu_vram_mb,
            "cpu_cores": self.cpu_cores,
            "ram_mb": self.ram_mb,
            "region": self.region,
        }


@dataclass
class RegisterHost(Message):
    host_id: str
    capabilities: Capabilities
    version: str = "0.4.0"

    def to_dict(self) -> dict[str, Any]:
        return {"host_id": self.host_id, "capabilities": self.capabilities.to_dict(), "version": self.version}


def parse_register(data: bytes) -> RegisterHost:
    obj = loads_object(data)
    caps = opt_object(obj, "capabilities") or {}
    return RegisterHost(
        host_id=req_str(obj, "host_id"),
        capabilities=Capabilities(
            gpu_model=opt_str(caps, "gpu_model"),
            gpu_vram_mb=opt_int(caps, "gpu_vram_mb"),
            cpu_cores=opt_int(caps, "cpu_cores") or 0,
            ram_mb=opt_int(caps, "ram_mb") or 0,
            region=opt_str(caps, "region"),
        ),
        version=opt_str(obj, "version") or "unknown",
    )


@dataclass
class PairingRequest(Message):
    host_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"host_id": self.host_id}


def parse_pairing_request(data: bytes) -> PairingRequest:
    return PairingRequest(host_id=req_str(loads_object(data), "host_id"))


@dataclass
class PairingResponse(Message):
    success: bool
    code: str | None = None
    expires_in_seconds: int | None = None
    pair_url: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return without_none(
            [
                ("success", self.success),
                ("code", self.code),
                ("expires_in_seconds", self.expires_in_seconds),
                ("pair_url", self.pair_url),
                ("error", self.error),
            ]
        )

    @property
    def already_paired(self) -> bool:
        """The only signal that makes an Island store `paired: true` (§4.2)."""
        return not self.success and "already paired" in (self.error or "")


def parse_pairing_response(data: bytes) -> PairingResponse:
    obj = loads_object(data)
    return PairingResponse(
        success=req_bool(obj, "success"),
        code=opt_str(obj, "code"),
        expires_in_seconds=opt_int(obj, "expires_in_seconds"),
        pair_url=opt_str(obj, "pair_url"),
        error=opt_str(obj, "error"),
    )


# --- jobs, coordinator → Island (§4.5, §4.11, §4.12) -----------------------------------------------------


@dataclass
class AssignJob(Message):
    job_id: str
    input: Any
    lease_expires: int
    runtime_type: str
    workload_id: str | int | None = None
    container_image: str | None = None
    image_digest: str | None = None
    wasm_url: str | None = None
    wasm_hash: str | None = None
    model_url: str | None = None
    model_hash: str | None = None
    model_context_size: int | None = None
    model_temperature: float | None = None
    onnx_model_url: str | None = None
    onnx_model_hash: str | None = None
    onnx_task_type: str | None = None
    sandbox_tier: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            **without_none([("workload_id", self.workload_id)]),
            "input": self.input,
            "lease_expires": self.lease_expires,
            **without_none(
                [
                    ("runtime_type", self.runtime_type),
                    ("container_image", self.container_image),
                    ("image_digest", self.image_digest),
                    ("wasm_url", self.wasm_url),
                    ("wasm_hash", self.wasm_hash),
                    ("model_url", self.model_url),
                    ("model_hash", self.model_hash),
                    ("model_context_size", self.model_context_size),
                    ("model_temperature", f32(self.model_temperature)),
                    ("onnx_model_url", self.onnx_model_url),
                    ("onnx_model_hash", self.onnx_model_hash),
                    ("onnx_task_type", self.onnx_task_type),
                    ("sandbox_tier", self.sandbox_tier),
                ]
            ),
        }


def parse_assign_job(data: bytes) -> AssignJob:
    """Parse as strictly as the Island does (§4.5): string job_id, `input` present, integer lease."""
    obj = loads_object(data)
    if "input" not in obj:
        raise ProtocolError("input: required")
    if "runtime_type" in obj and not isinstance(obj["runtime_type"], str):
        raise ProtocolError("runtime_type: expected string")
    workload_id = obj.get("workload_id")
    if workload_id is not None and (isinstance(workload_id, bool) or not isinstance(workload_id, str | int)):
        raise ProtocolError("workload_id: expected string or integer")
    return AssignJob(
        job_id=req_str(obj, "job_id"),
        workload_id=str(workload_id) if workload_id is not None else None,
        input=obj["input"],
        lease_expires=req_int(obj, "lease_expires", minimum=None),
        runtime_type=obj.get("runtime_type", "container"),
        container_image=opt_str(obj, "container_image"),
        image_digest=opt_str(obj, "image_digest"),
        wasm_url=opt_str(obj, "wasm_url"),
        wasm_hash=opt_str(obj, "wasm_hash"),
        model_url=opt_str(obj, "model_url"),
        model_hash=opt_str(obj, "model_hash"),
        model_context_size=opt_int(obj, "model_context_size"),
        model_temperature=opt_float(obj, "model_temperature"),
        onnx_model_url=opt_str(obj, "onnx_model_url"),
        onnx_model_hash=opt_str(obj, "onnx_model_hash"),
        onnx_task_type=opt_str(obj, "onnx_task_type"),
        sandbox_tier=opt_str(obj, "sandbox_tier"),
    )


def choose_runtime_type(workload_runtime: str, supported_runtimes: list[str] | tuple[str, ...]) -> str | None:
    """The `runtime_type` to send for a Cargo to an Island, or None when that Island cannot run it.

    Never a runtime the Island did not list: an unknown one silently runs as Docker with the Island's
    default image (§11 item 5). Only `container` Cargos run as containers."""
    runtime = cargo_runtime(workload_runtime)
    return runtime if can_run(supported_runtimes, runtime) else None


def build_assign_job(
    *,
    job_id: str,
    workload_id: int | str,
    input: Any,
    lease_expires_ms: int,
    workload_runtime: str,
    supported_runtimes: list[str] | tuple[str, ...],
    sandbox_tier: str,
    container_image: str | None = None,
    image_digest: str | None = None,
    wasm_url: str | None = None,
    wasm_hash: str | None = None,
    model_url: str | None = None,
    model_hash: str | None = None,
    onnx_task_type: str | None = None,
) -> AssignJob:
    """An AssignJob the Island will parse and run as intended, or ProtocolError if none exists (§4.5)."""
    runtime_type = choose_runtime_type(workload_runtime, supported_runtimes)
    if runtime_type is None:
        raise ProtocolError(f"Island does not support runtime {workload_runtime!r}")
    if runtime_type == "container" and not container_image:
        raise ProtocolError("container jobs need container_image (else the Island runs its default)")
    if runtime_type == "wasm" and not wasm_url:
        raise ProtocolError("wasm jobs need wasm_url")
    is_onnx = runtime_type == "onnx"
    return AssignJob(
        job_id=str(job_id),
        workload_id=str(workload_id),
        input=input,
        lease_expires=int(lease_expires_ms),
        runtime_type=runtime_type,
        container_image=container_image if runtime_type == "container" else None,
        image_digest=image_digest if runtime_type == "container" else None,
        wasm_url=wasm_url if runtime_type == "wasm" else None,
        wasm_hash=wasm_hash if runtime_type == "wasm" else None,
        model_url=None if is_onnx else (model_url if runtime_type in ("llmcpp", "diffusers") else None),
        model_hash=model_hash if runtime_type in ("llmcpp", "diffusers") else None,
        onnx_model_url=model_url if is_onnx else None,
        onnx_model_hash=model_hash if is_onnx else None,
        onnx_task_type=onnx_task_type if is_onnx else None,
        sandbox_tier=sandbox_tier,
    )


@dataclass
class CancelJob(Message):
    job_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id}


def parse_cancel(data: bytes) -> CancelJob:
    return CancelJob(job_id=req_str(loads_object(data), "job_id"))


@dataclass
class PreloadRecommendation(Message):
    workload_slug: str
    runtime_type: str
    type: str = "preload"
    model_url: str | None = None
    model_hash: str | None = None
    estimated_earnings_per_job: str | None = None
    queued_demand: int | None = None
    demand_score: int | None = None
    priority: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return without_none(
            [
                ("type", self.type),
                ("workload_slug", self.workload_slug),
                ("model_url", self.model_url),
                ("model_hash", self.model_hash),
                ("runtime_type", self.runtime_type),
                ("estimated_earnings_per_job", self.estimated_earnings_per_job),
                ("queued_demand", self.queued_demand),
                ("demand_score", self.demand_score),
                ("priority", self.priority),
            ]
        )


def parse_preload(data: bytes) -> PreloadRecommendation:
    obj = loads_object(data)
    return PreloadRecommendation(
        type=opt_str(obj, "type") or "preload",
        workload_slug=req_str(obj, "workload_slug"),
        runtime_type=req_str(obj, "runtime_type"),
        model_url=opt_str(obj, "model_url"),
        model_hash=opt_str(obj, "model_hash"),
        estimated_earnings_per_job=opt_str(obj, "estimated_earnings_per_job"),
        queued_demand=opt_int(obj, "queued_demand"),
        demand_score=opt_int(obj, "demand_score"),
        priority=opt_str(obj, "priority"),
    )
