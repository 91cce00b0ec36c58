"""The components of one coordinator process, as typed attributes, built once by `app.build_runtime`.

The types are imported for the checker only: this module imports no component, so every context can
import `Runtime` without an import circle. Components the supervision tree's children provide while they
run (the NATS connection, the Island bus, the dispatcher...) are None outside that time."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from coordinator.accounts.mailer import Mailer
from coordinator.config import Settings
from coordinator.repo.database import Database

if TYPE_CHECKING:
    from coordinator.accounts.principals import PrincipalCache
    from coordinator.billing.exchange import Surge, TtlCache
    from coordinator.billing.quotas import RateCounter
    from coordinator.hosts.fleet import FleetView
    from coordinator.hosts.intake import IslandIntake
    from coordinator.hosts.network import CachedNetworkStats
    from coordinator.jobs.dispatcher import Dispatcher
    from coordinator.jobs.events import JobBus, OutputSink
    from coordinator.jobs.hooks import Hook, HookRegistry
    from coordinator.jobs.intake import JobIntake
    from coordinator.nats.host_handler import HostHandler
    from coordinator.nats.publisher import Publisher
    from coordinator.pubsub import PubSub
    from coordinator.web.channels.registry import ChannelRegistry
    from coordinator.workloads.catalogue import Catalogue


@dataclass(eq=False)
class Runtime:
    settings: Settings
    db: Database
    mailer: Mailer
    # Built with the runtime (`app.build_runtime`), for the whole life of the process.
    pubsub: PubSub
    fleet: FleetView
    hooks: HookRegistry  # extension after-commit hooks of job transitions (intake cache, tests)
    surge: Surge  # the exchange's surge factor (the settings' ratio, multiplier and cache time)
    market_rates: TtlCache[Decimal | None]  # each Cargo's market rate, recomputed at most every 10 s
    catalogue: Catalogue  # each Cargo as submissions check it (by its revision) and job events label it
    principals: PrincipalCache  # authenticated API keys, for at most a second
    rate_counter: RateCounter  # this replica's request counts (flushed by `RateCounterSync`)
    network_stats: CachedNetworkStats
    scan_slots: asyncio.Semaphore  # concurrent registry image scans
    # Built from the runtime itself, right after it (`app.build_runtime`).
    builtin_hooks: dict[str, Hook] = field(init=False)  # by name; `jobs/moves.py` says which moves run which
    output: OutputSink = field(init=False)  # the basic sink; the accumulator and stream router replace it
    job_intake: JobIntake = field(init=False)
    channels: ChannelRegistry = field(init=False)
    # Set by the supervision tree's children while they run; None when they do not.
    nats: Any = None  # the process's NATS connection (nats.aio.client.Client)
    bus: JobBus | None = None
    dispatcher: Dispatcher | None = None
    publisher: Publisher | None = None
    host_handler: HostHandler | None = None
    island_intake: IslandIntake | None = None
    # When this process's JOB_OUTPUT consumer last had nothing left to fetch (`time.monotonic()`); None
    # where none runs. A success waits for missing chunks while it lags (`jobs/output_check.py`).
    output_drained_at: float | None = None
    # False until every child of the process's tree has started (then True, and False again once it
    # starts stopping); None when no full tree runs (tests assembling their own children).
    tree_ready: bool | None = None

    @property
    def signup_credits(self) -> Decimal:
        return Decimal(str(self.settings.signup_credits))

    @property
    def base_url(self) -> str:
        return self.settings.public_url or f"http://{self.settings.host}:{self.settings.port}"
