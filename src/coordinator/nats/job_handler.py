"""Core-NATS job messages from Islands: `host.*.output|progress|image|lease` → jobs intake.

Malformed payloads are logged with their subject, counted in `nats_malformed` and dropped."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from coordinator.jobs.intake import JobIntake
from coordinator.protocol import subjects
from coordinator.runtime import Runtime
from coordinator.supervisor import Child
from coordinator.telemetry import metrics

log = structlog.get_logger(__name__)

INTAKE_COMPONENT = "job_intake"


class Malformed(ValueError):
    pass


def _uint(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Malformed(f"{key} must be a non-negative integer")
    return value


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise Malformed(f"{key} must be a string")
    return value


def decode(subject: str, payload: bytes) -> tuple[uuid.UUID, str, dict[str, Any]]:
    """Sender (from the subject), subject class and JSON object of an Island job message."""
    host = subjects.host_id_from_subject(subject)
    if host is None:
        raise Malformed("not a host subject")
    try:
        host_id = uuid.UUID(host)
        data = json.loads(payload)
    except ValueError as exc:
        raise Malformed(str(exc)) from None
    if not isinstance(data, dict):
        raise Malformed("payload is not a JSON object")
    _str(data, "job_id")
    return host_id, subject.rsplit(".", 1)[1], data


def intake_of(runtime: Runtime) -> JobIntake:
    intake = runtime.components.get(INTAKE_COMPONENT)
    if intake is None:
        intake = runtime.components[INTAKE_COMPONENT] = JobIntake(runtime)
    assert isinstance(intake, JobIntake)
    return intake


async def handle_core_message(runtime: Runtime, subject: str, payload: bytes) -> None:
    """Parse and apply one output/progress/image/lease message; never raises on bad input."""
    kind = subject.rsplit(".", 1)[-1]
    metrics.nats_messages.labels(subject_class=kind).inc()
    intake = intake_of(runtime)
    try:
        host_id, kind, data = decode(subject, payload)
        job_id = data["job_id"]
        if kind == "output":
            chunk, final = _str(data, "chunk"), data.get("is_final")
            if not isinstance(final, bool):
                raise Malformed("is_final must be a boolean")
            await intake.output(host_id, job_id, _uint(data, "seq"), chunk, final)
        elif kind == "progress":
            await intake.progress(host_id, job_id, _uint(data, "step"), _uint(data, "total"))
        elif kind == "image":
            seed = data.get("seed")
            if seed is not None:
                _uint(data, "seed")
            image = {
                "image_data": _str(data, "image_data"),
                "format": _str(data, "format"),
                "width": _uint(data, "width"),
                "height": _uint(data, "height"),
                "seed": seed,
            }
            await intake.image(host_id, job_id, image)
        elif kind == "lease":
            await intake.lease(host_id, job_id, _uint(data, "extend_seconds"))
    except Malformed as exc:
        metrics.nats_malformed.labels(subject_class=kind).inc()
        log.warning("nats.malformed", subject=subject, error=str(exc))
    except Exception:
        log.exception("nats.job_message_failed", subject=subject)


class JobHandlerChild(Child):
    """Subscribes to the Island job-message subjects (never `host.>`)."""

    name = "job_handler"
    SUFFIXES = ("output", "progress", "image", "lease")

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def run(self, ready: Callable[[], None]) -> None:
        nc = self.runtime.nats
        if nc is None:
            raise RuntimeError("NATS is not connected")
        intake_of(self.runtime)

        def callback() -> Callable[[Any], Awaitable[None]]:
            async def on_message(msg: Any) -> None:
                await handle_core_message(self.runtime, msg.subject, msg.data)

            return on_message

        subs = [await nc.subscribe(f"host.*.{suffix}", cb=callback()) for suffix in self.SUFFIXES]
        ready()
        try:
            await asyncio.Event().wait()
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
