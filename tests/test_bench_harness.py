"""The benchmark harness: statistics and the report it writes (speed goals live in `coordinator bench`)."""

from __future__ import annotations

import json
from pathlib import Path

from coordinator.benchmarks.harness import Result, latency_summary, machine_description, percentile
from coordinator.benchmarks.report import write_report


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
