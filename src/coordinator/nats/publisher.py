"""Coordinator → Island publishes: JetStream assignments (de-duplicated), cancels, preload hints, purges."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import structlog

from coordinator.protocol import subjects
from coordinator.protocol.messages import AssignJob, CancelJob, PreloadRecommendation
from coordinator.telemetry import context

log = structlog.get_logger(__name__)


def absolute_url(url: str | None, base_url: str) -> str | None:
    """Relative Cargo URLs (`/cargos/x.wasm`) become absolute: the Island treats others as local paths."""
    if url is None or url.startswith(("http://", "https://")) or not url.startswith("/"):
        return url
    return base_url.rstrip("/") + url


class Publisher:
    """Publishes on the process's NATS connection; `base_url` is the coordinator's public URL."""

    def __init__(self, nc: Any, base_url: str) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.base_url = base_url

    async def publish_assignment(self, host_id: str, job: AssignJob, msg_id: str) -> int:
        """Store the AssignJob in stream JOBS on `host.<id>.jobs`; a repeated `msg_id` is dropped by the
        server's de-duplication window. Returns the stream sequence."""
        if job.wasm_url is not None:
            job = replace(job, wasm_url=absolute_url(job.wasm_url, self.base_url))
        ack = await self.js.publish(
            subjects.host_subject(host_id, "jobs"),
            job.encode(),
            stream=subjects.JOBS_STREAM,
            headers=context.nats_headers({"Nats-Msg-Id": msg_id}),
        )
        return int(ack.seq)

    async def publish_cancel(self, host_id: str, job_id: str) -> None:
        await self.nc.publish(subjects.host_subject(host_id, "cancel"), CancelJob(job_id).encode())

    async def publish_preload(self, host_id: str, recommendation: PreloadRecommendation) -> None:
        await self.nc.publish(subjects.host_subject(host_id, "preload"), recommendation.encode())

    async def purge_host_jobs(self, host_id: str) -> None:
        """Drop every stored job for that Island (it would replay them on return, §3.3)."""
        await self.js.purge_stream(subjects.JOBS_STREAM, subject=subjects.host_subject(host_id, "jobs"))
