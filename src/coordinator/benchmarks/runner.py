"""Runs the selected scenarios (baselines first) with a progress bar and writes the report."""

from __future__ import annotations

import asyncio
import importlib
import signal
import sys
import time
import traceback
from pathlib import Path

from rich.progress import Progress

from coordinator.benchmarks.harness import SCENARIOS, BenchEnv, Result, Runner, judge, machine_description
from coordinator.benchmarks.report import write_report

# The modules whose `@scenario` functions make up the suite (importing one registers its scenarios);
# a new group of scenarios is a new module added here.
SCENARIO_MODULES = [
    "coordinator.benchmarks.baselines",
    "coordinator.benchmarks.scenarios",
    "coordinator.benchmarks.channels",
    "coordinator.benchmarks.page_render",
    "coordinator.benchmarks.nats_auth",
    "coordinator.benchmarks.statements",
    "coordinator.benchmarks.first_token",
]
for _module in SCENARIO_MODULES:
    importlib.import_module(_module)


def run(
    names: list[str], *, quick: bool, output: Path, profile: bool = False, repeat: int = 1
) -> tuple[list[Result], Path]:
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
    profile_dir = None
    if profile:
        profile_dir = output / "profiles"
        profile_dir.mkdir(parents=True, exist_ok=True)
    env = BenchEnv.start(quick, profile_dir)
    results: list[Result] = []
    try:
        with Progress() as progress:
            runs = {item.name: 1 if item.baseline else max(1, repeat) for item in chosen}
            task = progress.add_task("benchmarks", total=sum(runs.values()))
            for item in chosen:
                attempts = []
                for attempt in range(runs[item.name]):
                    progress.update(task, description=f"{item.name} ({attempt + 1}/{runs[item.name]})")
                    started = time.perf_counter()
                    result = judge(run_one(item.name, item.run, env), baseline=item.baseline)
                    result.seconds = round(time.perf_counter() - started, 1)
                    result.profile, env.profiles = env.profiles, {}
                    validity = "" if result.valid is None else f", valid={result.valid}"
                    progress.console.print(f"{item.name}: {result.seconds} s, met={result.met}{validity}")
                    for reason in result.invalid_reasons:
                        progress.console.print(f"  invalid: {reason}")
                    attempts.append(result)
                    progress.advance(task)
                result = median_run(attempts)
                if item.baseline:
                    env.baselines[item.name] = result
                results.append(result)
    finally:
        env.stop()
    _, md = write_report(results, machine_description(), output, quick=quick)
    return results, md


def median_run(attempts: list[Result]) -> Result:
    """The run whose primary metric is the median of the repeated valid runs (targets are for the median);
    every run's value of that metric (None for an invalid run) and validity are kept beside it. When no run
    is valid, the last one is reported, invalid."""
    if len(attempts) == 1:
        return attempts[0]
    key = attempts[0].primary
    valid = [r for r in attempts if r.valid is not False]
    if key is None or not valid or any(r.metrics.get(key) is None for r in valid):
        chosen = (valid or attempts)[-1]
    else:
        ordered = sorted(valid, key=lambda r: float(r.metrics[key]))
        chosen = ordered[(len(ordered) - 1) // 2]
    if key is not None:
        chosen.metrics[f"{key}_of_each_run"] = [r.metrics.get(key) for r in attempts]
    if any(r.valid is not None for r in attempts):
        chosen.metrics["valid_runs"] = f"{sum(r.valid is True for r in attempts)} of {len(attempts)}"
        others = [
            f"run {i + 1} invalid: {reason}"
            for i, r in enumerate(attempts)
            if r is not chosen
            for reason in r.invalid_reasons
        ]
        if others:
            chosen.notes = " ".join([chosen.notes, "; ".join(others) + "."]).strip()
    chosen.seconds = round(sum(r.seconds for r in attempts), 1)
    return chosen


def _print_tasks() -> None:
    for task in asyncio.all_tasks():
        print(f"--- {task!r}", file=sys.stderr)
        task.print_stack(file=sys.stderr)


async def _dumpable(runner: Runner, env: BenchEnv) -> Result:
    """The scenario, with `kill -USR1 <bench pid>` printing every task's stack to stderr (a run that
    stops making progress shows what it waits for)."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, _print_tasks)
    try:
        return await runner(env)
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


def run_one(name: str, runner: Runner, env: BenchEnv) -> Result:
    """A scenario that raises is reported as missed with its error; the rest of the run goes on."""
    try:
        return asyncio.run(_dumpable(runner, env))
    except Exception as exc:
        traceback.print_exc()
        return Result(name, {}, {"error": repr(exc)}, target="(did not finish)", met=False)
