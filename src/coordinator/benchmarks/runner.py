"""Runs the selected scenarios (baselines first) with a progress bar and writes the report."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import traceback
from pathlib import Path

from rich.progress import Progress

from coordinator.benchmarks import baselines, scenarios  # noqa: F401 - registers the scenarios
from coordinator.benchmarks.harness import SCENARIOS, BenchEnv, Result, Runner, machine_description
from coordinator.benchmarks.report import write_report


def run(names: list[str], *, quick: bool, output: Path, profile: bool = False) -> tuple[list[Result], Path]:
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    chosen = [s for s in SCENARIOS.values() if s.baseline] + [
        SCENARIOS[n]
        for n in (names or [s.name for s in SCENARIOS.values() if not s.baseline])
        if not SCENARIOS[n].baseline
    ]
    # SIGTERM (a CI timeout, `kill`) must still stop the embedded servers in `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    env = BenchEnv.start(quick, profile)
    results: list[Result] = []
    try:
        with Progress() as progress:
            task = progress.add_task("benchmarks", total=len(chosen))
            for item in chosen:
                progress.update(task, description=item.name)
                started = time.perf_counter()
                result = run_one(item.name, item.run, env)
                result.seconds = round(time.perf_counter() - started, 1)
                result.profile, env.profiles = env.profiles, {}
                progress.console.print(f"{item.name}: {result.seconds} s, met={result.met}")
                if item.baseline:
                    env.baselines[item.name] = result
                results.append(result)
                progress.advance(task)
    finally:
        env.stop()
    _, md = write_report(results, machine_description(), output, quick=quick)
    return results, md


def run_one(name: str, runner: Runner, env: BenchEnv) -> Result:
    """A scenario that raises is reported as missed with its error; the rest of the run goes on."""
    try:
        return asyncio.run(runner(env))
    except Exception as exc:
        traceback.print_exc()
        return Result(name, {}, {"error": repr(exc)}, target="(did not finish)", met=False)
