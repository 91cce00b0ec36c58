"""`--fleet N`: N simulated Islands in one process, with varied hardware, regions and asking prices."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace

from island.agent import Island, IslandConfig

GPUS = [("NVIDIA GeForce RTX 4090", 24564), ("NVIDIA GeForce RTX 3080", 10240), (None, None)]
REGIONS = ["eu-west", "us-east", "ap-south", "auto"]
CORES = [4, 8, 16, 32]
RAM_MB = [8192, 16384, 32768, 65536]


def fleet_configs(base: IslandConfig, count: int) -> list[IslandConfig]:
    """Island i gets a GPU every third time (VRAM ≥ 8192 MiB, so `sdxl` is runnable), a region, a size
    and an ask of 0.5–1.4 credits; each keeps its own state file, hence its own stable host_id."""
    configs = []
    for i in range(count):
        gpu_model, vram = GPUS[i % len(GPUS)]
        default_price = f"{0.5 + (i % 10) / 10:.1f}"
        configs.append(
            replace(
                base,
                state_dir=base.state_dir / f"island-{i:04d}",
                host_id=None,
                gpu_model=gpu_model,
                gpu_vram_mb=vram,
                region=REGIONS[i % len(REGIONS)],
                cpu_cores=CORES[i % len(CORES)],
                ram_mb=RAM_MB[(i // 2) % len(RAM_MB)],
                asking_prices={"_default": default_price, "llm-chat": f"{float(default_price) * 2:.1f}"},
            )
        )
    return configs


async def run_fleet(
    base: IslandConfig, count: int, stop: asyncio.Event, make: Callable[[IslandConfig], Island] = Island
) -> list[Island]:
    """Start the fleet (a few at a time, like machines booting), run until `stop`, then stop them all.
    `make` builds each Island (the channel transport's `ChannelIsland`, for phones)."""
    islands = [make(config) for config in fleet_configs(base, count)]
    for start in range(0, len(islands), 50):
        await asyncio.gather(*(island.start() for island in islands[start : start + 50]))
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.gather(*(island.stop() for island in islands))
    return islands
