"""The dashboard and docs/metrics.md only name metrics the coordinator really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

from coordinator.runtime import Runtime
from coordinator.telemetry.collectors import MetricsCollector

DOCS = Path(__file__).resolve().parents[2] / "docs"
NAME = re.compile(r"\bcoordinator_[a-z_]+[a-z]\b")
SUFFIXES = ("", "_total", "_bucket", "_count", "_sum")


async def exported_names(runtime: Runtime) -> set[str]:
    await MetricsCollector(runtime).collect_all()
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in SUFFIXES)
    return names


def referenced(text: str) -> set[str]:
    return set(NAME.findall(text))


async def test_the_dashboard_queries_exported_metrics(runtime: Runtime) -> None:
    dashboard = json.loads((DOCS / "grafana" / "coordinator.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 30
    names = referenced("\n".join(exprs))
    assert {"coordinator_islands", "coordinator_jobs", "coordinator_billing_revenue_credits"} <= names
    assert names - await exported_names(runtime) == set()


async def test_the_metrics_doc_names_only_exported_metrics(runtime: Runtime) -> None:
    names = referenced((DOCS / "metrics.md").read_text())
    assert names - await exported_names(runtime) == set()
