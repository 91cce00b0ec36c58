"""Telemetry: Prometheus metrics and structured logs with correlation ids."""
