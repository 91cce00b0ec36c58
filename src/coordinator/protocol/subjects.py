"""NATS subject names and JetStream names of the Island protocol (island-protocol §2–3)."""

from __future__ import annotations

REGISTER = "coordinator.hosts.register"
PAIRING = "coordinator.hosts.pairing"

JOBS_STREAM = "JOBS"
JOBS_SUBJECTS = "host.*.jobs"
STATUS_STREAM = "JOB_STATUS"
STATUS_SUBJECTS = "host.*.status"
STATUS_CONSUMER = "coordinator-status"

# Island → coordinator suffixes the coordinator subscribes to (never `host.>`).
INBOUND_SUFFIXES = ("heartbeat", "status", "output", "progress", "image", "lease")


def host_subject(host_id: str, suffix: str) -> str:
    return f"host.{host_id}.{suffix}"


def jobs_consumer(host_id: str) -> str:
    return f"host-{host_id}"


def host_id_from_subject(subject: str) -> str | None:
    """The Island identity is the subject's second token; payloads carry no host_id (§2)."""
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != "host" or not parts[1]:
        return None
    return parts[1]
