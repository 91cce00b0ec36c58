"""Demo data for a local stack: the default Cargos and a demo account with credits and an API key."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from sqlalchemy import delete

from coordinator.accounts import service as accounts
from coordinator.accounts.models import MagicLink
from coordinator.runtime import Runtime
from coordinator.workloads.service import seed_default_cargos

DEMO_EMAIL = "demo@archipelag.local"
# How long the one-click sign-in link `make run` prints stays valid (it also dies with the next run).
DEMO_LINK_TTL_SECONDS = 12 * 3600


@dataclass
class DemoAccount:
    email: str
    api_key: str


async def seed_demo(runtime: Runtime, key_file: Path) -> DemoAccount:
    """Idempotent: re-running keeps the account and, while it still works, the key stored in `key_file`."""
    secret = runtime.settings.secret_key
    async with runtime.db.transaction() as session:
        await seed_default_cargos(session)
        user = await accounts.get_or_create_user(session, DEMO_EMAIL, credits=Decimal(10_000))
        if user.role != "admin":
            await accounts.set_admin(session, user, True)
    if key_file.exists():
        saved = key_file.read_text().strip()
        async with runtime.db.session() as session:
            if await accounts.authenticate_api_key(session, secret, saved) is not None:
                return DemoAccount(DEMO_EMAIL, saved)
    async with runtime.db.transaction() as session:
        user = await accounts.get_or_create_user(session, DEMO_EMAIL, credits=Decimal(10_000))
        _, plaintext = await accounts.create_api_key(session, secret, user, "demo")
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(plaintext + "\n")
    key_file.chmod(0o600)
    return DemoAccount(DEMO_EMAIL, plaintext)


async def demo_sign_in_link(runtime: Runtime) -> str:
    """A one-click sign-in link for the demo account, valid for this run: the unused links of earlier
    runs are dropped first. Like every magic link it works once."""
    async with runtime.db.transaction() as session:
        await session.execute(
            delete(MagicLink).where(MagicLink.email == DEMO_EMAIL, MagicLink.used_at.is_(None))
        )
        token = await accounts.request_magic_link(
            session,
            runtime.settings.secret_key,
            runtime.mailer,
            DEMO_EMAIL,
            base_url=runtime.base_url,
            ttl_seconds=DEMO_LINK_TTL_SECONDS,
        )
    return f"{runtime.base_url.rstrip('/')}/auth/magic/{token}"
