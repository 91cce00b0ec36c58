"""Every Island ⇄ coordinator message (island-protocol §4): typed, encoded in the Island's field order,
parsed tolerantly (unknown keys ignored, wrong types → ProtocolError)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from coordinator.protocol.codec import (
    ProtocolError,
    dumps,
    f32,
    loads_object,
    opt_float,
    opt_int,
    opt_list,
    opt_object,
    opt_str,
    req_bool,
    req_int,
    req_str,
    str_list,
    without_none,
)

__all__ = [
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
]

# Job states an Island may report (`completed` is the node-agent alias of `succeeded`).
ISLAND_STATES = ("started", "streaming", "succeeded", "failed", "cancelled", "completed")


class _Message:
    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def encode(self) -> bytes:
        return dumps(self.to_dict())


# --- registration and pairing (§4.1, §4.2) ----------------------------------------------------------------


@dataclass
class Capabilities(_Message):
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
class RegisterHost(_Message):
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
class PairingRequest(_Message):
    host_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"host_id": self.host_id}


def parse_pairing_request(data: bytes) -> PairingRequest:
    return PairingRequest(host_id=req_str(loads_object(data), "host_id"))


@dataclass
class PairingResponse(_Message):
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


# --- heartbeat (§4.3) ------------------------------------------------------------------------------------


@dataclass
class SystemMetrics(_Message):
    cpu_percent: float = 0.0
    memory_used_mb: int = 0
    memory_total_mb: int = 0
    disk_used_gb: int = 0
    disk_total_gb: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpu_percent": f32(self.cpu_percent),
            "memory_used_mb": self.memory_used_mb,
            "memory_total_mb": self.memory_total_mb,
            "disk_used_gb": self.disk_used_gb,
            "disk_total_gb": self.disk_total_gb,
        }


@dataclass
class GpuMetrics(_Message):
    index: int = 0
    utilization_percent: int = 0
    memory_used_mb: int = 0
    memory_total_mb: int = 0
    temperature_c: int = 0
    power_draw_w: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "utilization_percent": self.utilization_percent,
            "memory_used_mb": self.memory_used_mb,
            "memory_total_mb": self.memory_total_mb,
            "temperature_c": self.temperature_c,
            "power_draw_w": f32(self.power_draw_w),
        }


@dataclass
class CacheStats(_Message):
    cached_image_count: int = 0
    cached_size_mb: int = 0
    warm_workload_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cached_image_count": self.cached_image_count,
            "cached_size_mb": self.cached_size_mb,
            "warm_workload_count": len(self.warm_workload_ids),
            "warm_workload_ids": list(self.warm_workload_ids),
        }


@dataclass
class PerformanceEstimates(_Message):
    gpu_bandwidth_gb_s: float | None = None
    estimated_llm_tok_s: float | None = None
    max_concurrent_containers: int = 1
    wasm_memory_limit_mb: int = 0
    supported_runtimes: list[str] = field(default_factory=lambda: ["container", "wasm"])
    nats_rtt_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "gpu_bandwidth_gb_s": f32(self.gpu_bandwidth_gb_s),
            "estimated_llm_tok_s": f32(self.estimated_llm_tok_s),
            "max_concurrent_containers": self.max_concurrent_containers,
            "wasm_memory_limit_mb": self.wasm_memory_limit_mb,
            "supported_runtimes": list(self.supported_runtimes),
        }
        if self.nats_rtt_ms is not None:
            out["nats_rtt_ms"] = f32(self.nats_rtt_ms)
        return out


@dataclass
class Heartbeat(_Message):
    host_id: str
    active_jobs: int = 0
    timestamp: int = 0
    agent_version: str = "0.4.0"
    system: SystemMetrics = field(default_factory=SystemMetrics)
    gpus: list[GpuMetrics] | None = None
    cache: CacheStats = field(default_factory=CacheStats)
    performance_estimates: PerformanceEstimates = field(default_factory=PerformanceEstimates)
    asking_prices: dict[str, str] | None = None
    status: str = "online"

    def to_dict(self) -> dict[str, Any]:
        return without_none(
            [
                ("host_id", self.host_id),
                ("status", self.status),
                ("active_jobs", self.active_jobs),
                ("timestamp", self.timestamp),
                ("agent_version", self.agent_version),
                ("system", self.system.to_dict()),
                ("gpus", [g.to_dict() for g in self.gpus] if self.gpus else None),
                ("cache", self.cache.to_dict()),
                ("performance_estimates", self.performance_estimates.to_dict()),
                ("asking_prices", dict(self.asking_prices) if self.asking_prices else None),
            ]
        )


def _parse_gpus(items: list[Any] | None) -> list[GpuMetrics] | None:
    if not items:
        return None
    gpus = []
    for item in items:
        if not isinstance(item, dict):
            raise ProtocolError("gpus: expected objects")
        gpus.append(
            GpuMetrics(
                index=opt_int(item, "index") or 0,
                utilization_percent=opt_int(item, "utilization_percent") or 0,
                memory_used_mb=opt_int(item, "memory_used_mb") or 0,
                memory_total_mb=opt_int(item, "memory_total_mb") or 0,
                temperature_c=opt_int(item, "temperature_c") or 0,
                power_draw_w=opt_float(item, "power_draw_w") or 0.0,
            )
        )
    return gpus


def _parse_prices(obj: dict[str, Any]) -> dict[str, str] | None:
    prices = opt_object(obj, "asking_prices")
    if prices is None:
        return None
    out: dict[str, str] = {}
    for slug, value in prices.items():
        # Strings per spec; numbers tolerated (older tooling), anything else refused.
        if isinstance(value, str):
            out[slug] = value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[slug] = str(value)
        else:
            raise ProtocolError(f"asking_prices.{slug}: expected string")
    return out


def parse_heartbeat(data: bytes) -> Heartbeat:
    obj = loads_object(data)
    system = opt_object(obj, "system") or {}
    cache = opt_object(obj, "cache") or {}
    perf = opt_object(obj, "performance_estimates") or {}
    return Heartbeat(
        host_id=req_str(obj, "host_id"),
        status=opt_str(obj, "status") or "online",
        active_jobs=opt_int(obj, "active_jobs") or 0,
        timestamp=opt_int(obj, "timestamp") or 0,
        agent_version=opt_str(obj, "agent_version") or "unknown",
        system=SystemMetrics(
            cpu_percent=opt_float(system, "cpu_percent") or 0.0,
            memory_used_mb=opt_int(system, "memory_used_mb") or 0,
            memory_total_mb=opt_int(system, "memory_total_mb") or 0,
            disk_used_gb=opt_int(system, "disk_used_gb") or 0,
            disk_total_gb=opt_int(system, "disk_total_gb") or 0,
        ),
        gpus=_parse_gpus(opt_list(obj, "gpus")),
        cache=CacheStats(
            cached_image_count=opt_int(cache, "cached_image_count") or 0,
            cached_size_mb=opt_int(cache, "cached_size_mb") or 0,
            warm_workload_ids=str_list(cache, "warm_workload_ids"),
        ),
        performance_estimates=PerformanceEstimates(
            gpu_bandwidth_gb_s=opt_float(perf, "gpu_bandwidth_gb_s"),
            estimated_llm_tok_s=opt_float(perf, "estimated_llm_tok_s"),
            max_concurrent_containers=opt_int(perf, "max_concurrent_containers") or 1,
            wasm_memory_limit_mb=opt_int(perf, "wasm_memory_limit_mb") or 0,
            supported_runtimes=str_list(perf, "supported_runtimes") or ["container", "wasm"],
            nats_rtt_ms=opt_float(perf, "nats_rtt_ms"),
        ),
        asking_prices=_parse_prices(obj),
    )


# --- jobs, coordinator → Island (§4.5, §4.11, §4.12) -----------------------------------------------------


@dataclass
class AssignJob(_Message):
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
    runtime = workload_runtime or "container"
    return runtime if runtime in supported_runtimes else None


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
class CancelJob(_Message):
    job_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id}


def parse_cancel(data: bytes) -> CancelJob:
    return CancelJob(job_id=req_str(loads_object(data), "job_id"))


@dataclass
class PreloadRecommendation(_Message):
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


# --- job reports, Island → coordinator (§4.6–4.10) -------------------------------------------------------


@dataclass
class JobStatus(_Message):
    job_id: str
    state: str
    timestamp: int
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return without_none(
            [
                ("job_id", self.job_id),
                ("state", self.state),
                ("error", self.error),
                ("timestamp", self.timestamp),
            ]
        )


def parse_status(data: bytes) -> JobStatus:
    obj = loads_object(data)
    state = req_str(obj, "state")
    if state not in ISLAND_STATES:
        raise ProtocolError(f"state: unknown {state!r}")
    return JobStatus(
        job_id=req_str(obj, "job_id"),
        state=state,
        error=opt_str(obj, "error"),
        timestamp=opt_int(obj, "timestamp", minimum=None) or 0,
    )


@dataclass
class JobOutput(_Message):
    job_id: str
    seq: int
    chunk: str
    is_final: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "seq": self.seq, "chunk": self.chunk, "is_final": self.is_final}


def parse_output(data: bytes) -> JobOutput:
    obj = loads_object(data)
    return JobOutput(
        job_id=req_str(obj, "job_id"),
        seq=req_int(obj, "seq"),
        chunk=req_str(obj, "chunk"),
        is_final=req_bool(obj, "is_final"),
    )


@dataclass
class JobProgress(_Message):
    job_id: str
    step: int
    total: int

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "step": self.step, "total": self.total}


def parse_progress(data: bytes) -> JobProgress:
    obj = loads_object(data)
    return JobProgress(job_id=req_str(obj, "job_id"), step=req_int(obj, "step"), total=req_int(obj, "total"))


@dataclass
class JobImage(_Message):
    job_id: str
    image_data: str
    format: str
    width: int
    height: int
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return without_none(
            [
                ("job_id", self.job_id),
                ("image_data", self.image_data),
                ("format", self.format),
                ("width", self.width),
                ("height", self.height),
                ("seed", self.seed),
            ]
        )


def parse_image(data: bytes) -> JobImage:
    obj = loads_object(data)
    return JobImage(
        job_id=req_str(obj, "job_id"),
        image_data=req_str(obj, "image_data"),
        format=req_str(obj, "format"),
        width=req_int(obj, "width"),
        height=req_int(obj, "height"),
        seed=opt_int(obj, "seed"),
    )


@dataclass
class LeaseRenewal(_Message):
    job_id: str
    extend_seconds: int = 60

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "extend_seconds": self.extend_seconds}


def parse_lease(data: bytes) -> LeaseRenewal:
    obj = loads_object(data)
    return LeaseRenewal(job_id=req_str(obj, "job_id"), extend_seconds=opt_int(obj, "extend_seconds") or 60)
