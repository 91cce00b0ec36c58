"""NATS subject names and JetStream names of the Island protocol (island-protocol §2–3)."""

from __future__ import annotations

REGISTER = "coordinator.hosts.register"
PAIRING = "coordinator.hosts.pairing"

JOBS_STREAM = "JOBS"
JOBS_SUBJECTS = "host.*.jobs"
STATUS_STREAM = "JOB_STATUS"
STATUS_SUBJECTS = "host.*.status"
STATUS_CONSUMER = "coordinator-status"
OUTPUT_STREAM = "JOB_OUTPUT"
OUTPUT_SUBJECTS = "host.*.output"
OUTPUT_CONSUMER = "coordinator-output"

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


def valid_host_id(host_id: str) -> bool:
    """At least 8 characters (the Island slices 8 for its client name) and nothing that breaks a subject or
    consumer name: no `.`, `*`, `>` or whitespace (island-protocol §6)."""
    return len(host_id) >= 8 and not any(c in ".*>" or c.isspace() for c in host_id)
