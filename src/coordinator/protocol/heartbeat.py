"""The heartbeat an Island publishes every 10 s on `host.<id>.heartbeat` (island-protocol §4.3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from coordinator.protocol.codec import (
    Message,
    ProtocolError,
    f32,
    loads_object,
    opt_float,
    opt_int,
    opt_list,
    opt_object,
    opt_str,
    req_str,
    str_list,
    without_none,
)
from coordinator.protocol.runtimes import DEFAULT_RUNTIMES, advertised_runtimes


@dataclass
class SystemMetrics(Message):
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
class GpuMetrics(Message):
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
class CacheStats(Message):
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
class PerformanceEstimates(Message):
    gpu_bandwidth_gb_s: float | None = None
    estimated_llm_tok_s: float | None = None
    max_concurrent_containers: int = 1
    wasm_memory_limit_mb: int = 0
    supported_runtimes: list[str] = field(default_factory=lambda: list(DEFAULT_RUNTIMES))
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


THERMAL_STATES = ("nominal", "fair", "serious", "critical")
NETWORKS = ("wifi", "cellular")


@dataclass
class MobileState(Message):
    """The optional fields a phone or browser Island adds to its heartbeat (channels spec §4)."""

    battery_level: int | None = None
    charging: bool | None = None
    thermal_state: str | None = None
    network: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return without_none(
            [
                ("battery_level", self.battery_level),
                ("charging", self.charging),
                ("thermal_state", self.thermal_state),
                ("network", self.network),
            ]
        )


def _parse_mobile(obj: dict[str, Any]) -> MobileState | None:
    if not any(key in obj for key in ("battery_level", "charging", "thermal_state", "network")):
        return None
    battery = opt_int(obj, "battery_level")
    if battery is not None and not 0 <= battery <= 100:
        raise ProtocolError("battery_level: expected 0-100")
    charging = obj.get("charging")
    if charging is not None and not isinstance(charging, bool):
        raise ProtocolError("charging: expected a boolean")
    thermal = opt_str(obj, "thermal_state")
    if thermal is not None and thermal not in THERMAL_STATES:
        raise ProtocolError(f"thermal_state: expected one of {', '.join(THERMAL_STATES)}")
    network = opt_str(obj, "network")
    if network is not None and network not in NETWORKS:
        raise ProtocolError(f"network: expected one of {', '.join(NETWORKS)}")
    return MobileState(battery, charging, thermal, network)


@dataclass
class Heartbeat(Message):
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
    mobile: MobileState | None = None

    def to_dict(self) -> dict[str, Any]:
        out = without_none(
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
        if self.mobile is not None:
            out.update(self.mobile.to_dict())
        return out


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
            # An empty list means none (never read as the default): only a missing field is defaulted.
            supported_runtimes=advertised_runtimes(perf, str_list(perf, "supported_runtimes")),
            nats_rtt_ms=opt_float(perf, "nats_rtt_ms"),
        ),
        asking_prices=_parse_prices(obj),
        mobile=_parse_mobile(obj),
    )
