"""Prometheus metrics of the coordinator. Contexts and transports import the objects they update.

Names follow `coordinator_<area>_<what>_<unit>`; see docs/metrics.md for meaning and alerts. Gauges that a
process updates itself declare how prometheus-client's multiprocess mode combines them across processes
(`PROMETHEUS_MULTIPROC_DIR`); the gauges computed from PostgreSQL live in `snapshots` instead."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
QUERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

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
assigned_at_submit = Counter(
    "coordinator_jobs_assigned_at_submit_total", "Jobs assigned in their submit's transaction (no pass)"
)
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
http_bodies_refused = Counter(
    "coordinator_http_bodies_refused_total", "Request bodies refused with 413 (over the size limit)"
)
http_rate_limited = Counter(
    "coordinator_http_rate_limited_total",
    "Requests refused with 429 by a limit without an API key (magic links, sign-in, bad credentials)",
    ["limit"],
)
open_streams = Gauge(
    "coordinator_open_streams", "Open SSE streams and WebSockets", ["kind"], multiprocess_mode="livesum"
)
pubsub_peers = Gauge(
    "coordinator_pubsub_peer_replicas",
    "Other replicas this process's pub/sub bridge hears (it publishes events only while there is one)",
    multiprocess_mode="livemax",
)

# Channels (the Phoenix socket at /socket/websocket)
channel_joins = Counter(
    "coordinator_channel_joins_total", "Channel joins, by topic kind and outcome", ["kind", "outcome"]
)
channel_rejected = Counter(
    "coordinator_channel_rejected_frames_total",
    "Socket frames refused (malformed, too large, unknown topic, not joined, invalid payload)",
    ["reason"],
)

# Background jobs
worker_runs = Counter("coordinator_worker_runs_total", "Background job runs", ["worker", "outcome"])
worker_seconds = Histogram(
    "coordinator_worker_duration_seconds", "Background job duration", ["worker"], buckets=LATENCY_BUCKETS
)

# Database (this process's engine; see telemetry/database.py)
db_query_seconds = Histogram(
    "coordinator_db_query_seconds",
    "SQL statement duration, by statement kind (select, insert, update, delete, with, other)",
    ["kind"],
    buckets=QUERY_BUCKETS,
)
db_query_errors = Counter("coordinator_db_query_errors_total", "SQL statements that raised", ["kind"])
db_pool_checked_out = Gauge(
    "coordinator_db_pool_checked_out_connections",
    "Connections currently checked out of the pool",
    multiprocess_mode="livesum",
)
db_pool_capacity = Gauge(
    "coordinator_db_pool_capacity_connections",
    "Most connections the pool may hand out (pool size + max overflow)",
    multiprocess_mode="livesum",
)

# The PostgreSQL pollers themselves (telemetry/collectors.py)
collector_seconds = Histogram(
    "coordinator_collector_duration_seconds",
    "Duration of one collector poll, by group",
    ["group"],
    buckets=LATENCY_BUCKETS,
)
collector_errors = Counter("coordinator_collector_errors_total", "Collector polls that failed", ["group"])

# The in-process background loops (loops.LoopService)
loop_errors = Counter("coordinator_loop_errors_total", "Loop passes that raised (the loop goes on)", ["loop"])
loop_overruns = Counter(
    "coordinator_loop_overruns_total", "Loop passes that took longer than the interval", ["loop"]
)


class SnapshotCollector(Collector):
    """Gauges computed by a poller: each group's whole family set is swapped at once, so a label set that
    disappears from PostgreSQL (a region with no Island left) disappears from the scrape too."""

    def __init__(self) -> None:
        self._groups: dict[str, list[Metric]] = {}

    def publish(self, group: str, families: list[Metric]) -> None:
        self._groups[group] = families

    def clear(self) -> None:
        self._groups = {}

    def collect(self) -> Iterable[Metric]:
        for families in list(self._groups.values()):
            yield from families

    def describe(self) -> Iterable[Metric]:
        return []


snapshots = SnapshotCollector()
REGISTRY.register(snapshots)
