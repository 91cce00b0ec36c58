"""The telemetry child: first in the tree, it instruments the database engine and cleans up after."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

from prometheus_client import multiprocess

from coordinator.runtime import Runtime
from coordinator.supervisor import Child
from coordinator.telemetry.database import instrument_engine
from coordinator.telemetry.exposition import multiprocess_dir


class TelemetryChild(Child):
    name = "telemetry"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def run(self, ready: Callable[[], None]) -> None:
        uninstall = instrument_engine(
            self.runtime.db.engine.sync_engine, slow_query_ms=self.runtime.settings.db_slow_query_ms
        )
        ready()
        try:
            await asyncio.Event().wait()
        finally:
            uninstall()
            if multiprocess_dir() is not None:
                # Drops this pid's live gauges (open streams, pool) from the merged view.
                with contextlib.suppress(Exception):
                    multiprocess.mark_process_dead(os.getpid())
