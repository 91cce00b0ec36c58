"""structlog set-up: JSON lines in production, readable console output in development."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from coordinator.telemetry import context


def configure_logging(
    level: str = "INFO", fmt: str = "auto", *, dev: bool = False, stream: TextIO | None = None
) -> None:
    """Route structlog and stdlib logging through one handler; correlation ids bound with
    `telemetry.context` are merged into every line, ours and libraries' alike."""
    use_json = fmt == "json" or (fmt == "auto" and not dev)
    shared: list[structlog.types.Processor] = [
        context.merge_ids,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.add_logger_name,
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info
            if use_json
            else structlog.processors.ExceptionPrettyPrinter(),
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "procrastinate", "alembic", "nats"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
