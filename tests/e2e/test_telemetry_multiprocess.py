"""Multiprocess mode: with PROMETHEUS_MULTIPROC_DIR set, one scrape covers every process on the machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from coordinator.telemetry import exposition, metrics

CHILD = """
import os, sys
from prometheus_client import multiprocess
from coordinator.telemetry import metrics
metrics.worker_runs.labels(worker="mp_test", outcome="success").inc()
metrics.open_streams.labels(kind="mp_test").inc()
if sys.argv[1] == "exit-cleanly":
    multiprocess.mark_process_dead(os.getpid())
"""


def test_one_scrape_merges_every_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for mode in ("exit-cleanly", "still-running"):
        subprocess.run([sys.executable, "-c", CHILD, mode], env=env, check=True, timeout=60)
    metrics.snapshots.publish("mp_test", [GaugeMetricFamily("coordinator_mp_test_gauge", "test", value=3)])
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    try:
        body, content_type = exposition.render(None)
    finally:
        metrics.snapshots.publish("mp_test", [])
    assert content_type.startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("coordinator_worker_runs_total", (("outcome", "success"), ("worker", "mp_test")))] == 2
    # livesum: the process that said it exited no longer counts its open streams.
    assert samples[("coordinator_open_streams", (("kind", "mp_test"),))] == 1
    # The PostgreSQL gauges of the scraping process are part of the merged view.
    assert samples[("coordinator_mp_test_gauge", ())] == 3
