"""The shared handles of one coordinator process (settings, database, mailer, NATS), built once at start."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from coordinator.accounts.mailer import Mailer
from coordinator.config import Settings
from coordinator.repo.database import Database

# `components` key: False until every child of the process's tree has started (then True, and False again
# once it starts stopping); absent when no full tree runs (tests assembling their own children).
TREE_READY_COMPONENT = "tree_ready"


@dataclass
class Runtime:
    settings: Settings
    db: Database
    mailer: Mailer
    # Set by the NATS subtree when it is running; None when NATS is disabled.
    nats: Any = None
    # Components registered by later subsystems (pub/sub, fleet view, dispatcher...), by name.
    components: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        return cls(
            settings=settings,
            db=Database(
                settings.database_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow
            ),
            mailer=Mailer(
                smtp_host=settings.smtp_host,
                smtp_port=settings.smtp_port,
                smtp_user=settings.smtp_user,
                smtp_password=settings.smtp_password,
                sender=settings.smtp_from,
            ),
        )

    @property
    def signup_credits(self) -> Decimal:
        return Decimal(str(self.settings.signup_credits))

    @property
    def base_url(self) -> str:
        return self.settings.public_url or f"http://{self.settings.host}:{self.settings.port}"
