"""The benchmark harness: a registry of scenarios, the embedded environment they share, and statistics."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from coordinator.devstack import EmbeddedNats, EmbeddedPostgres
from coordinator.repo.migrate import upgrade


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100) by linear interpolation; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3) if ms else 0.0,
        "mean_ms": round(statistics.fmean(ms), 3) if ms else 0.0,
        "samples": len(ms),
    }


@dataclass
class Result:
    name: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    # Raw series for plots: name → list of values (latencies in ms, or throughput per second).
    series: dict[str, list[float]] = field(default_factory=dict)
    target: str | None = None
    met: bool | None = None
    notes: str = ""
    seconds: float = 0.0  # wall time of the scenario, set by the runner
    # The metric the target is judged on; with `--repeat`, the run with its median is reported.
    primary: str | None = None
    # With `--profile`: where the coordinator's CPU went, per coordinator process the scenario started.
    profile: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchEnv:
    """Embedded PostgreSQL (a migrated database) and NATS, shared by every scenario of a run."""

    root: Path
    postgres: EmbeddedPostgres
    nats: EmbeddedNats
    database_url: str = ""
    nats_url: str = ""
    quick: bool = False
    baselines: dict[str, Result] = field(default_factory=dict)
    # With `--profile`: each coordinator process is sampled into this folder (py-spy's collapsed stacks, for
    # flame-graph tools), and its summary lands in `profiles` under its stack's name.
    profile_dir: Path | None = None
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    _databases: int = 0

    @classmethod
    def start(cls, quick: bool, profile_dir: Path | None = None) -> BenchEnv:
        root = Path(tempfile.mkdtemp(prefix="coordinator-bench-"))
        env = cls(root, EmbeddedPostgres(root / "postgres"), EmbeddedNats(root / "nats"), quick=quick)
        env.profile_dir = profile_dir
        env.postgres.start()
        env.database_url = env.postgres.ensure_database("bench")
        upgrade(env.database_url)
        env.nats_url = env.nats.start()
        return env

    def fresh_database(self, name: str) -> str:
        """A new, migrated database for one coordinator (repeated runs of a scenario get their own)."""
        self._databases += 1
        url = self.postgres.ensure_database(f"{name}_{self._databases}")
        upgrade(url)
        return url

    def stop(self) -> None:
        self.nats.stop()
        self.postgres.stop()
        shutil.rmtree(self.root, ignore_errors=True)


Runner = Callable[[BenchEnv], Coroutine[Any, Any, Result]]


@dataclass
class Scenario:
    name: str
    description: str
    run: Runner
    baseline: bool = False


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, description: str, *, baseline: bool = False) -> Callable[[Runner], Runner]:
    def register(fn: Runner) -> Runner:
        SCENARIOS[name] = Scenario(name, description, fn, baseline)
        return fn

    return register


def machine_description() -> dict[str, Any]:
    cpu_model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model,
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started
