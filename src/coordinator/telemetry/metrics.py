"""Prometheus metrics of the coordinator. Contexts and transports import the objects they update.

Names follow `coordinator_<area>_<what>_<unit>`; see docs/metrics.md for meaning and alerts."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# NATS
nats_messages = Counter(
    "coordinator_nats_messages_total", "NATS messages received, by subject class", ["subject_class"]
)
nats_malformed = Counter(
    "coordinator_nats_malformed_messages_total",
    "NATS messages that could not be parsed (acknowledged and dropped)",
    ["subject_class"],
)
nats_rejected = Counter(
    "coordinator_nats_rejected_messages_total",
    "Well-formed NATS messages refused (wrong sender, unknown job, stale)",
    ["subject_class", "reason"],
)
nats_redeliveries = Counter(
    "coordinator_nats_redeliveries_total", "JetStream messages delivered more than once", ["stream"]
)

# Islands
heartbeats = Counter("coordinator_heartbeats_total", "Heartbeats ingested")
heartbeat_flush_seconds = Histogram(
    "coordinator_heartbeat_flush_seconds", "Duration of one batched heartbeat write", buckets=LATENCY_BUCKETS
)

# Jobs
job_transitions = Counter(
    "coordinator_job_transitions_total", "Job state transitions applied", ["from_state", "to_state"]
)
jobs_submitted = Counter("coordinator_jobs_submitted_total", "Jobs accepted at submit", ["workload"])
dispatch_latency = Histogram(
    "coordinator_job_submit_to_assign_seconds",
    "Time from submit to the AssignJob publish",
    buckets=LATENCY_BUCKETS,
)
time_to_first_token = Histogram(
    "coordinator_job_time_to_first_token_seconds",
    "Time from submit to the first output chunk",
    buckets=LATENCY_BUCKETS,
)

# Billing
credits_moved = Counter("coordinator_credits_total", "Credits moved through the ledger, by type", ["type"])

# HTTP
http_request_seconds = Histogram(
    "coordinator_http_request_seconds",
    "HTTP request duration",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
open_streams = Gauge("coordinator_open_streams", "Open SSE streams and WebSockets", ["kind"])

# Background jobs
worker_runs = Counter("coordinator_worker_runs_total", "Background job runs", ["worker", "outcome"])
worker_seconds = Histogram(
    "coordinator_worker_duration_seconds", "Background job duration", ["worker"], buckets=LATENCY_BUCKETS
)
