"""Factories that build domain objects through the same service functions the API uses."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from coordinator.accounts import service as accounts
from coordinator.accounts.models import User
from coordinator.runtime import Runtime
from coordinator.workloads.service import seed_default_cargos


@dataclass
class Consumer:
    user: User
    key: str

    @property
    def headers(self) -> dict[str, str]:
        # Every official client sends Content-Type: application/json, even on GET and DELETE.
        return {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}


async def make_consumer(
    runtime: Runtime,
    email: str = "consumer@example.com",
    *,
    credits: Decimal = Decimal(10_000),
    admin: bool = False,
    scopes: list[str] | None = None,
) -> Consumer:
    async with runtime.db.transaction() as session:
        user = await accounts.create_user(session, email, credits=credits, admin=admin)
        _, key = await accounts.create_api_key(session, runtime.settings.secret_key, user, "test", scopes)
    return Consumer(user, key)


async def seed_cargos(runtime: Runtime) -> None:
    async with runtime.db.transaction() as session:
        await seed_default_cargos(session)
