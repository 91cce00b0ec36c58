"""Coordinator → channel Island messages, routed over NATS core to whichever replica holds its socket.

A phone or browser Island has no NATS connection: the dispatcher (on any replica) publishes the event
on `coordinator.channels.island.<host_id>`; the replica holding that Island's `island:<id>` channel
pushes it down the socket. Nobody holding it means the socket is gone: the lease runs out and the job
is requeued, as for a NATS Island that vanished."""

from __future__ import annotations

import json
import uuid
from typing import Any

PUSH_PREFIX = "coordinator.channels.island"
REVOKED_SUBJECT = "coordinator.channels.revoked"

ASSIGN_JOB = "assign_job"
CANCEL_JOB = "cancel_job"
PRELOAD = "preload"


def push_subject(host_id: uuid.UUID | str) -> str:
    return f"{PUSH_PREFIX}.{host_id}"


def encode_push(event: str, payload: dict[str, Any]) -> bytes:
    return json.dumps({"event": event, "payload": payload}, separators=(",", ":")).encode()


def decode_push(data: bytes) -> tuple[str, dict[str, Any]] | None:
    try:
        body = json.loads(data)
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("event"), str):
        return None
    payload = body.get("payload")
    return (body["event"], payload) if isinstance(payload, dict) else None


async def publish_push(nc: Any, host_id: uuid.UUID | str, event: str, payload: dict[str, Any]) -> None:
    await nc.publish(push_subject(host_id), encode_push(event, payload))
