"""What an Island reports on a job: status, output, progress, image, lease (island-protocol §4.6–4.10)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coordinator.protocol.codec import (
    Message,
    ProtocolError,
    loads_object,
    opt_int,
    opt_str,
    req_bool,
    req_int,
    req_str,
    without_none,
)

# Job states an Island may report (`completed` is the node-agent alias of `succeeded`).
ISLAND_STATES = ("started", "streaming", "succeeded", "failed", "cancelled", "completed")


@dataclass
class JobStatus(Message):
    job_id: str
    state: str
    timestamp: int
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return without_none(
            [
                ("job_id", self.job_id),
                ("state", self.state),
                ("error", self.error),
                ("timestamp", self.timestamp),
            ]
        )


def parse_status(data: bytes) -> JobStatus:
    obj = loads_object(data)
    state = req_str(obj, "state")
    if state not in ISLAND_STATES:
        raise ProtocolError(f"state: unknown {state!r}")
    return JobStatus(
        job_id=req_str(obj, "job_id"),
        state=state,
        error=opt_str(obj, "error"),
        timestamp=opt_int(obj, "timestamp", minimum=None) or 0,
    )


@dataclass
class JobOutput(Message):
    job_id: str
    seq: int
    chunk: str
    is_final: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "seq": self.seq, "chunk": self.chunk, "is_final": self.is_final}


def parse_output(data: bytes) -> JobOutput:
    obj = loads_object(data)
    return JobOutput(
        job_id=req_str(obj, "job_id"),
        seq=req_int(obj, "seq"),
        chunk=req_str(obj, "chunk"),
        is_final=req_bool(obj, "is_final"),
    )


@dataclass
class JobProgress(Message):
    job_id: str
    step: int
    total: int

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "step": self.step, "total": self.total}


def parse_progress(data: bytes) -> JobProgress:
    obj = loads_object(data)
    return JobProgress(job_id=req_str(obj, "job_id"), step=req_int(obj, "step"), total=req_int(obj, "total"))


@dataclass
class JobImage(Message):
    job_id: str
    image_data: str
    format: str
    width: int
    height: int
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return without_none(
            [
                ("job_id", self.job_id),
                ("image_data", self.image_data),
                ("format", self.format),
                ("width", self.width),
                ("height", self.height),
                ("seed", self.seed),
            ]
        )


def parse_image(data: bytes) -> JobImage:
    obj = loads_object(data)
    return JobImage(
        job_id=req_str(obj, "job_id"),
        image_data=req_str(obj, "image_data"),
        format=req_str(obj, "format"),
        width=req_int(obj, "width"),
        height=req_int(obj, "height"),
        seed=opt_int(obj, "seed"),
    )


@dataclass
class LeaseRenewal(Message):
    job_id: str
    extend_seconds: int = 60

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "extend_seconds": self.extend_seconds}


def parse_lease(data: bytes) -> LeaseRenewal:
    obj = loads_object(data)
    return LeaseRenewal(job_id=req_str(obj, "job_id"), extend_seconds=opt_int(obj, "extend_seconds") or 60)
