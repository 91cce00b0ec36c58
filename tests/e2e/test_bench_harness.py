"""The benchmark harness: statistics and the report it writes (speed goals live in `coordinator bench`)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx
import psutil

from coordinator.benchmarks.harness import (
    SCENARIOS,
    BenchEnv,
    Load,
    Result,
    judge,
    latency_summary,
    machine_description,
    percentile,
)
from coordinator.benchmarks.profile import Sampler, summarise
from coordinator.benchmarks.report import write_report
from coordinator.benchmarks.runner import SCENARIO_MODULES, median_run, run_one
from coordinator.benchmarks.stack import _submit
from coordinator.benchmarks.system import tree_cpu_seconds
from coordinator.runtime import Runtime
from tests.factories import make_consumer, seed_cargos
from tests.job_support import make_island


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def steady_load(clock: FakeClock, progress: list[int], offered: int = 10) -> Load:
    """A load window of len(progress) seconds: `offered` per second, `progress[i]` completed in second i."""
    load = Load(progress="completed", clock=clock)
    load.begin()
    for done in progress:
        load.offer(offered)
        load.accept(offered)
        load.complete(done)
        clock.now += 1
    load.end()
    return load


def test_percentiles_interpolate() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.5
    assert percentile(values, 99) == 99.01
    assert percentile([], 99) == 0.0
    summary = latency_summary([0.001, 0.002, 0.003])
    assert summary["p50_ms"] == 2.0 and summary["max_ms"] == 3.0 and summary["samples"] == 3


def test_report_has_json_markdown_and_plots(tmp_path: Path) -> None:
    results = [
        Result("baseline_x", {"n": 1}, {"rate": 10.0}, {"latency (ms)": [1.0, 2.0, 3.0]}),
        Result("scenario_y", {"n": 2}, {"rate": 5.0}, target="rate ≥ 4", met=True),
    ]
    json_path, md_path = write_report(results, machine_description(), tmp_path, quick=True)
    data = json.loads(json_path.read_text())
    assert [r["name"] for r in data["results"]] == ["baseline_x", "scenario_y"]
    assert data["machine"]["logical_cpus"] >= 1
    text = md_path.read_text()
    assert "| scenario_y | rate ≥ 4 | — | yes |" in text
    png = next(tmp_path.glob("*-baseline_x.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_summary_attributes_samples_by_library_and_function() -> None:
    collapsed = "\n".join(
        [
            # py-spy names a file from its package, or by its full path outside one
            "main (coordinator/cli.py:1);submit_job (coordinator/jobs/service.py:9);"
            "execute (sqlalchemy/orm/session.py:5) 6",
            "main (/app/coordinator/cli.py:1);submit_job (/app/coordinator/jobs/service.py:9);"
            "_send (/venv/psycopg/_cursor_base.py:3) 3",
            "run (/usr/lib/python3.11/asyncio/base_events.py:7) 1",
        ]
    )
    summary = summarise(collapsed)
    assert summary["samples"] == 10
    assert summary["by_category_pct"] == {
        "SQLAlchemy": 60.0,
        "database driver (psycopg)": 30.0,
        "event loop (asyncio, uvloop)": 10.0,
    }
    # the entry point is left out; a function counts once per sample however deep it appears
    assert summary["coordinator_functions_pct"] == {"submit_job (jobs/service.py:9)": 90.0}


def test_sampler_profiles_a_real_process(tmp_path: Path) -> None:
    """py-spy attached from outside finds the function a process spends its time in."""
    program = tmp_path / "busy.py"
    program.write_text(
        "import time\n"
        "def spin_here():\n"
        "    end = time.time() + 1.5\n"
        "    while time.time() < end:\n"
        "        sum(range(1000))\n"
        "spin_here()\n"
    )
    proc = subprocess.Popen([sys.executable, str(program)])
    sampler = Sampler(proc.pid, tmp_path / "profile.txt", rate=200)
    sampler.start()
    proc.wait()
    sampler.wait()
    summary = summarise(sampler.output.read_text())
    assert int(summary["samples"]) > 50  # type: ignore[call-overload]
    assert any("spin_here" in frame for frame in summary["hottest_frames_pct"])  # type: ignore[attr-defined]


def test_report_shows_the_profile_and_a_failed_scenario_does_not_stop_the_run(tmp_path: Path) -> None:
    async def broken(env: BenchEnv) -> Result:
        raise RuntimeError("no Island answered")

    failed = run_one("broken", broken, None)  # type: ignore[arg-type]
    assert failed.met is False and "no Island answered" in failed.metrics["error"]
    ok = Result("scenario_z", {}, {"rate": 1.0}, target="t", met=False)
    ok.profile = {"s_z": summarise("f (/app/coordinator/jobs/dispatcher.py:3);g (nats/aio/client.py:1) 4")}
    _, md_path = write_report([failed, ok], machine_description(), tmp_path, quick=True)
    text = md_path.read_text()
    assert "| broken | (did not finish) | — | **no** | error RuntimeError('no Island answered')" in text
    assert "| `NATS client` | 100.0 |" in text
    assert "| `f (jobs/dispatcher.py:3)` | 100.0 |" in text


def test_a_process_trees_cpu_counts_the_work_of_its_children() -> None:
    """PostgreSQL's share of a scenario is its postmaster's and its backends' CPU: a child's work counts
    to the tree it belongs to, while the child runs."""
    burn = (
        "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\ntime.sleep(30)"
    )
    spawn = (
        f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {burn!r}])\ntime.sleep(30)"
    )
    parent = subprocess.Popen([sys.executable, "-c", spawn])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and tree_cpu_seconds(parent.pid) < 0.4:
            time.sleep(0.1)
        own = psutil.Process(parent.pid).cpu_times()
        assert tree_cpu_seconds(parent.pid) >= 0.4  # the child's 0.4 s of work
        assert own.user + own.system < 0.4  # none of it is the parent's own
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()


def test_repeated_runs_report_the_median_run() -> None:
    runs = [
        Result("s", {}, {"rate": rate, "p99": p99}, met=rate >= 5, primary="rate")
        for rate, p99 in ((9.0, 1.0), (3.0, 2.0), (6.0, 3.0))
    ]
    chosen = median_run(runs)
    assert chosen.metrics["rate"] == 6.0 and chosen.metrics["p99"] == 3.0 and chosen.met is True
    assert chosen.metrics["rate_of_each_run"] == [9.0, 3.0, 6.0]


def test_a_steady_load_is_valid_and_its_series_are_in_the_json(tmp_path: Path) -> None:
    clock = FakeClock()
    load = steady_load(clock, [0, 4, 9, 10, 10])  # the first second fills the pipeline
    result = judge(
        Result("steady", {}, {"rate": 9.0}, target="t", primary="rate", met=True).with_load(load),
        baseline=False,
    )
    assert result.valid is True and result.met is True and result.metrics["rate"] == 9.0
    json_path, md_path = write_report([result], machine_description(), tmp_path, quick=True)
    record = json.loads(json_path.read_text())["results"][0]
    assert record["valid"] is True
    assert record["load"]["offered"] == 50 and record["load"]["refused"] == {}
    assert record["load"]["per_second"]["offered"] == [10, 10, 10, 10, 10]
    assert record["load"]["per_second"]["completed"] == [0, 4, 9, 10, 10]
    assert "| steady | t | yes | yes | rate 9.0 |" in md_path.read_text()


def test_a_stalled_second_makes_the_run_invalid_and_it_yields_no_number(tmp_path: Path) -> None:
    """The shape of the committed 2026-11-27 lifecycle run: load offered throughout, completions stop."""
    clock = FakeClock()
    load = steady_load(clock, [80, 120, 140, 0, 0, 0])
    result = judge(
        Result(
            "stalled",
            {},
            {"median_completed_per_s": 60.0},
            target="t",
            primary="median_completed_per_s",
            met=True,
        ).with_load(load),
        baseline=False,
    )
    assert result.valid is False and result.met is None
    assert result.invalid_reasons == ["zero completed in second(s) 3, 4, 5 of the load"]
    assert result.metrics["median_completed_per_s"] is None
    assert result.metrics["median_completed_per_s_unvalidated"] == 60.0
    _, md_path = write_report([result], machine_description(), tmp_path, quick=True)
    assert "| stalled | t | **no**: zero completed in second(s) 3, 4, 5 of the load | invalid |" in (
        md_path.read_text()
    )


def test_a_scenario_without_a_load_record_is_invalid_but_a_baseline_needs_none() -> None:
    unproven = judge(Result("s", {}, {"rate": 1.0}, primary="rate"), baseline=False)
    assert unproven.valid is False and "recorded no load" in unproven.invalid_reasons[0]
    base = judge(Result("baseline_x", {}, {"rate": 1.0}), baseline=True)
    assert base.valid is None and base.invalid_reasons == []


def test_repeated_runs_report_the_median_of_the_valid_runs() -> None:
    clock = FakeClock()
    runs = []
    for rate, progress in ((9.0, [5, 5, 5]), (1.0, [5, 0, 5]), (6.0, [5, 5, 5]), (7.0, [5, 5, 5])):
        result = Result("s", {}, {"rate": rate}, primary="rate", met=True)
        runs.append(judge(result.with_load(steady_load(clock, progress)), baseline=False))
    chosen = median_run(runs)
    assert chosen.valid is True and chosen.metrics["rate"] == 7.0  # median of 9, 6, 7; not of all four
    assert chosen.metrics["rate_of_each_run"] == [9.0, None, 6.0, 7.0]
    assert chosen.metrics["valid_runs"] == "3 of 4"
    assert "run 2 invalid: zero completed in second(s) 1 of the load" in chosen.notes


def test_the_plot_shows_offered_and_completed_per_second_on_one_chart(tmp_path: Path) -> None:
    clock = FakeClock()
    result = Result("lifecycle_like", {}, {"rate": 1.0}, primary="rate").with_load(steady_load(clock, [3, 0]))
    result = judge(result, baseline=False)
    write_report([result], machine_description(), tmp_path, quick=True)
    png = next(tmp_path.glob("*-lifecycle_like.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_scenario_registry_is_a_dict_filled_by_the_listed_modules() -> None:
    assert "coordinator.benchmarks.scenarios" in SCENARIO_MODULES
    assert {"lifecycle", "hot_account", "submit_to_assign", "dispatcher"} <= set(SCENARIOS)
    assert {"statements", "time_to_first_token"} <= set(SCENARIOS)


async def test_a_scenario_that_starves_on_purpose_is_reported_invalid(
    runtime: Runtime, live_server: str, tmp_path: Path
) -> None:
    """Four submitters on an account with credits for three jobs, for a load window of three seconds: the
    coordinator refuses the rest (402), the harness counts every refusal, and the report marks the scenario
    invalid instead of quoting its submit rate."""
    await seed_cargos(runtime)
    await make_island(runtime)
    consumer = await make_consumer(runtime, "starved@example.com", credits=Decimal(3))
    headers = {"Authorization": f"Bearer {consumer.key}", "Content-Type": "application/json"}
    load = Load(progress="accepted")
    accepted: list[str] = []
    async with httpx.AsyncClient(base_url=live_server, timeout=30) as client:
        load.begin()
        stop_at = time.monotonic() + 3.0

        async def submitter() -> None:
            while time.monotonic() < stop_at:
                job_id, _ = await _submit(client, headers, load)
                if job_id is not None:
                    accepted.append(job_id)
                await asyncio.sleep(0.05)

        await asyncio.gather(*[submitter() for _ in range(4)])
        load.end()
    rate = len(accepted) / load.window
    result = judge(
        Result(
            "starved", {"credits": 3}, {"submits_per_s": rate}, target="t", primary="submits_per_s", met=True
        ).with_load(load),
        baseline=False,
    )
    assert 1 <= len(accepted) <= 3
    assert result.valid is False and result.met is None and result.metrics["submits_per_s"] is None
    # Every offered submit was either accepted or counted as refused: 402 once the credits ran out (and
    # 429 if the key's per-minute limit was reached first on a fast machine).
    assert sum(load.refused.values()) == load.totals["offered"] - len(accepted)
    assert load.refused["http_402"] > 0 and set(load.refused) <= {"http_402", "http_429"}
    assert any("refused or unanswered (http_402" in reason for reason in result.invalid_reasons)
    assert any(reason.startswith("zero accepted in second(s)") for reason in result.invalid_reasons)
    json_path, md_path = write_report([result], machine_description(), tmp_path, quick=True)
    record = json.loads(json_path.read_text())["results"][0]
    assert record["valid"] is False and record["load"]["refused"] == dict(load.refused)
    assert sum(record["load"]["per_second"]["offered"]) == load.totals["offered"]
    assert "| starved | t | **no**: " in md_path.read_text()
