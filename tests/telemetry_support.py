"""Test helpers for telemetry: scrape and read `/metrics`, capture log lines with their correlation ids."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from coordinator.telemetry import context

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(body: str) -> Samples:
    """Every sample of an exposition, keyed by (name, labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value (exact label set), or None when absent."""
    return samples.get((name, frozenset(labels.items())))


async def scrape(http: httpx.AsyncClient, **headers: str) -> Samples:
    response = await http.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    return parse(response.text)


@contextmanager
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    """Every structlog line emitted in the block, with the bound correlation ids merged in."""
    with capture_logs(processors=[context.merge_ids]) as logs:
        yield logs


def lines_with(logs: list[dict[str, Any]], **ids: object) -> list[dict[str, Any]]:
    """The captured lines carrying all these ids (e.g. `job_id=str(job.id)`)."""
    wanted = {k: str(v) for k, v in ids.items()}
    return [line for line in logs if all(line.get(k) == v for k, v in wanted.items())]
