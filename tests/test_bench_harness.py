"""The benchmark harness: statistics and the report it writes (speed goals live in `coordinator bench`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from coordinator.benchmarks.harness import BenchEnv, Result, latency_summary, machine_description, percentile
from coordinator.benchmarks.profile import Sampler, summarise
from coordinator.benchmarks.report import write_report
from coordinator.benchmarks.runner import median_run, run_one


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
    assert "| scenario_y | rate ≥ 4 | yes |" in text
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
    assert "| broken | (did not finish) | **no** | error RuntimeError('no Island answered')" in text
    assert "| `NATS client` | 100.0 |" in text
    assert "| `f (jobs/dispatcher.py:3)` | 100.0 |" in text


def test_repeated_runs_report_the_median_run() -> None:
    runs = [
        Result("s", {}, {"rate": rate, "p99": p99}, met=rate >= 5, primary="rate")
        for rate, p99 in ((9.0, 1.0), (3.0, 2.0), (6.0, 3.0))
    ]
    chosen = median_run(runs)
    assert chosen.metrics["rate"] == 6.0 and chosen.metrics["p99"] == 3.0 and chosen.met is True
    assert chosen.metrics["rate_of_each_run"] == [9.0, 3.0, 6.0]
