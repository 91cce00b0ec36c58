"""Runs the selected scenarios (baselines first) with a progress bar and writes the report."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rich.progress import Progress

from coordinator.benchmarks import baselines, scenarios  # noqa: F401 - registers the scenarios
from coordinator.benchmarks.harness import SCENARIOS, BenchEnv, Result, machine_description
from coordinator.benchmarks.report import write_report


def run(names: list[str], *, quick: bool, output: Path) -> tuple[list[Result], Path]:
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    chosen = [s for s in SCENARIOS.values() if s.baseline] + [
        SCENARIOS[n]
        for n in (names or [s.name for s in SCENARIOS.values() if not s.baseline])
        if not SCENARIOS[n].baseline
    ]
    env = BenchEnv.start(quick)
    results: list[Result] = []
    try:
        with Progress() as progress:
            task = progress.add_task("benchmarks", total=len(chosen))
            for item in chosen:
                progress.update(task, description=item.name)
                result: Result = asyncio.run(item.run(env))
                if item.baseline:
                    env.baselines[item.name] = result
                results.append(result)
                progress.advance(task)
    finally:
        env.stop()
    _, md = write_report(results, machine_description(), output, quick=quick)
    return results, md
