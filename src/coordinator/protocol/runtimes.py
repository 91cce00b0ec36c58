"""The one rule of which runtimes an Island can run (island-protocol §4.3 and pitfall 5).

It lives in the protocol package because the wire defines it and the AssignJob builder needs it; the
contexts use it through `coordinator.hosts.rules.can_run`. An Island runs exactly the runtimes its last
heartbeat listed in `performance_estimates.supported_runtimes`: an empty list means none, and only a
heartbeat without the field (older agents) means the historic default. An Island known only from its
registration (no heartbeat yet) lists nothing, so it gets no job."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# What an Island that does not send the field runs (node-agent and Island releases before the field).
DEFAULT_RUNTIMES: tuple[str, ...] = ("container", "wasm")


def advertised_runtimes(performance_estimates: dict[str, Any], listed: list[str]) -> list[str]:
    """The runtimes of one heartbeat: the listed ones (even none) when the field is present, else the
    default."""
    return list(listed) if "supported_runtimes" in performance_estimates else list(DEFAULT_RUNTIMES)


def cargo_runtime(runtime: str | None) -> str:
    """A Cargo's runtime; a Cargo without one runs as a container."""
    return runtime or "container"


def can_run(supported_runtimes: Iterable[str] | None, runtime: str | None) -> bool:
    """Whether an Island that listed `supported_runtimes` can run a Cargo of `runtime`."""
    return cargo_runtime(runtime) in tuple(supported_runtimes or ())
