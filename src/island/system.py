"""What an Island reports about its machine: capabilities, live metrics (psutil) and performance estimates,
with the official Island's formulas (island-protocol §4.3)."""

from __future__ import annotations

import os

import psutil

from coordinator.protocol.messages import Capabilities, PerformanceEstimates, SystemMetrics

# A few entries of the official bandwidth table (GB/s), matched on a normalised model name.
GPU_BANDWIDTH = {
    "rtx 4090": 1008.0,
    "rtx 3080": 760.3,
    "a100": 2039.0,
    "h100": 3350.0,
    "t4": 320.0,
    "l4": 300.0,
}


def local_capabilities(region: str | None) -> Capabilities:
    return Capabilities(
        cpu_cores=os.cpu_count() or 1,
        ram_mb=psutil.virtual_memory().total // (1024 * 1024),
        region=region,
    )


def system_metrics() -> SystemMetrics:
    memory = psutil.virtual_memory()
    try:
        disk = psutil.disk_usage("/")
        disk_used, disk_total = disk.used // 1024**3, disk.total // 1024**3
    except OSError:
        disk_used, disk_total = 0, 0
    return SystemMetrics(
        cpu_percent=psutil.cpu_percent(interval=None),
        memory_used_mb=(memory.total - memory.available) // (1024 * 1024),
        memory_total_mb=memory.total // (1024 * 1024),
        disk_used_gb=disk_used,
        disk_total_gb=disk_total,
    )


def gpu_bandwidth(gpu_model: str | None, vram_mb: int | None) -> float | None:
    if not gpu_model:
        return None
    name = gpu_model.lower()
    for word in ("nvidia", "geforce", "amd", "radeon", "intel"):
        name = name.replace(word, "")
    name = " ".join(name.split())
    matches = [k for k in GPU_BANDWIDTH if k in name]
    if matches:
        return GPU_BANDWIDTH[max(matches, key=len)]
    return (vram_mb or 0) / 1024 * 40 or 200.0


def performance_estimates(
    caps: Capabilities, supported: list[str], rtt_ms: float | None
) -> PerformanceEstimates:
    bandwidth = gpu_bandwidth(caps.gpu_model, caps.gpu_vram_mb)
    tok_s = None
    if bandwidth is not None:
        factor = 0.3 if caps.gpu_vram_mb is None else (1.0 if caps.gpu_vram_mb >= 4608 else 0.5)
        tok_s = float(round(bandwidth / 4.5 * 0.55 * factor))
    return PerformanceEstimates(
        gpu_bandwidth_gb_s=bandwidth,
        estimated_llm_tok_s=tok_s,
        max_concurrent_containers=max(1, min(caps.cpu_cores // 2, caps.ram_mb // 2048)),
        wasm_memory_limit_mb=caps.ram_mb * 3 // 4,
        supported_runtimes=supported,
        nats_rtt_ms=rtt_ms,
    )
