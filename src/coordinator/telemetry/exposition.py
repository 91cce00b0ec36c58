"""The scrape body: this process's registry, or every process's when multiprocess mode is on."""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from coordinator.telemetry import metrics

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def registry() -> CollectorRegistry:
    """With `PROMETHEUS_MULTIPROC_DIR` set, a fresh registry merging every process's files plus this
    process's PostgreSQL snapshot gauges; otherwise the process registry."""
    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=path)
    merged.register(metrics.snapshots)
    return merged


def render(accept: str | None) -> tuple[bytes, str]:
    """The exposition in the format the scraper asked for (Prometheus text, or OpenMetrics)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry()), content_type
