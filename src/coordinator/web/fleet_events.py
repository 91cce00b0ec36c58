"""`admin:fleet`: the announcement that an Island changed (an operator or owner action, a socket Island
joining or leaving), which wakes every open fleet page on every replica (`pages/fleet_live.py`)."""

from __future__ import annotations

from coordinator.pubsub import Event
from coordinator.runtime import Runtime

FLEET_TOPIC = "admin:fleet"


async def fleet_changed(runtime: Runtime) -> None:
    """Tell every open fleet page to re-read the table now."""
    await runtime.pubsub.publish(Event.make(FLEET_TOPIC, 0, {"event": "fleet_changed"}))
