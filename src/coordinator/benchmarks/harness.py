"""The benchmark harness: a registry of scenarios, the embedded environment they share, and statistics."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import tempfile
import time
from collections import Counter
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


# The per-second series every load records (`Load.per_second`), in plot order.
SERIES = ("offered", "accepted", "assigned", "completed")


@dataclass
class Load:
    """What a scenario offered and what became of it, second by second of its load window.

    A number measured under load only means something if the load was real: every request answered and
    accepted, and the system under test moving every second. `problems()` says why a run is not valid; the
    runner marks such a run invalid instead of reporting its number (issue 19). `progress` names the series
    that must move every second: `completed` for a lifecycle, `accepted` for a submit benchmark, `assigned`
    for dispatch."""

    progress: str = "completed"
    # Seconds at the start of the window allowed to show no progress yet (the pipeline filling).
    warmup_seconds: int = 2
    clock: Callable[[], float] = time.monotonic
    started: float = field(default_factory=time.monotonic)
    stopped: float | None = None
    totals: Counter[str] = field(default_factory=Counter)
    # Refused or unanswered requests, by cause: `http_<status>`, `timeout`, `transport_error`,
    # `publish_failed`, `not_assigned`, `job_failed`…
    refused: Counter[str] = field(default_factory=Counter)
    _by_second: dict[str, Counter[int]] = field(default_factory=dict)

    def begin(self) -> None:
        """The load window opens now (counts before it land in second 0)."""
        self.started = self.clock()

    def end(self) -> None:
        self.stopped = self.clock()

    @property
    def window(self) -> float:
        return (self.stopped if self.stopped is not None else self.clock()) - self.started

    def count(self, series: str, n: int = 1) -> None:
        second = max(0, int(self.clock() - self.started))
        self._by_second.setdefault(series, Counter())[second] += n
        self.totals[series] += n

    def offer(self, n: int = 1) -> None:
        self.count("offered", n)

    def accept(self, n: int = 1) -> None:
        self.count("accepted", n)

    def assign(self, n: int = 1) -> None:
        self.count("assigned", n)

    def complete(self, n: int = 1) -> None:
        self.count("completed", n)

    def refuse(self, cause: str, n: int = 1) -> None:
        self.refused[cause] += n

    def per_second(self) -> dict[str, list[int]]:
        """Each series over the window's seconds (the last, partial second included)."""
        seconds = max(1, int(self.window + 0.999))
        names = [n for n in SERIES if n in self._by_second or n in (self.progress, "offered")]
        names += sorted(n for n in self._by_second if n not in names)
        return {n: [self._by_second.get(n, Counter())[i] for i in range(seconds)] for n in names}

    def problems(self) -> list[str]:
        """Why the run does not prove its load was real; empty when it does."""
        found = []
        if self.totals["offered"] == 0:
            found.append("no load was offered")
        if self.refused:
            causes = ", ".join(f"{k} {v}" for k, v in sorted(self.refused.items()))
            found.append(f"{sum(self.refused.values())} refused or unanswered ({causes})")
        progress = self.per_second().get(self.progress, [])
        full = int(self.window)  # the last, partial second is not judged
        if self.totals["offered"] and not any(progress):
            found.append(f"no progress ({self.progress}) at all")
        else:
            first = next((i for i, n in enumerate(progress) if n), 0)
            idle = [i for i in range(min(first, self.warmup_seconds), full) if not progress[i]]
            if idle:
                found.append(f"zero {self.progress} in second(s) {', '.join(map(str, idle))} of the load")
        return found

    def record(self) -> dict[str, Any]:
        """The JSON form: totals, refusals by cause and the per-second series."""
        return {
            "window_s": round(self.window, 3),
            "progress": self.progress,
            **{n: self.totals[n] for n in SERIES},
            "refused": dict(self.refused),
            "per_second": self.per_second(),
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
    # The load a scenario offered (its `Load.record()`, or one per phase by name); None for baselines.
    load: dict[str, Any] | None = None
    # False when the load does not prove itself (refusals, a second without progress): no number then.
    valid: bool | None = None
    invalid_reasons: list[str] = field(default_factory=list)

    def with_load(self, *loads: tuple[str, Load] | Load) -> Result:
        """Attach the load record(s) and judge them: one `Load`, or named phases `("drain", load)`."""
        named = [item if isinstance(item, tuple) else ("", item) for item in loads]
        records = {name: load.record() for name, load in named}
        self.load = records[""] if list(records) == [""] else records
        self.invalid_reasons = [
            f"{name}: {problem}" if name else problem for name, load in named for problem in load.problems()
        ]
        return self


def judge(result: Result, *, baseline: bool) -> Result:
    """Mark a scenario run valid or invalid. An invalid run yields no number: its primary metric moves to
    `<primary>_unvalidated` and `met` becomes None (neither met nor missed). A scenario that recorded no
    load is invalid too (every scenario proves its load; baselines measure raw parts and need not)."""
    if baseline:
        return result
    if "error" in result.metrics:  # did not finish: already missed, with its error
        result.valid = False
        result.invalid_reasons.append("did not finish")
        return result
    if result.load is None:
        result.invalid_reasons.append("the scenario recorded no load (offered, refused, per-second series)")
    result.valid = not result.invalid_reasons
    if not result.valid:
        result.met = None
        key = result.primary
        if key is not None and result.metrics.get(key) is not None:
            result.metrics[f"{key}_unvalidated"] = result.metrics[key]
            result.metrics[key] = None
    return result


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
