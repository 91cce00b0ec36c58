"""`coordinator admin`: operator tasks (users, credits, Island credentials, default Cargos) on the database
of the environment, or of the dev stack running from the data dir."""

from __future__ import annotations

import asyncio
import contextlib
import os
from decimal import Decimal, InvalidOperation
from typing import Annotated

import typer

from coordinator.cli_settings import load_settings as _settings

admin_app = typer.Typer(help="Operator tasks.", no_args_is_help=True)

DATABASE_VARIABLES = ("DATABASE_URL", "COORDINATOR_DATABASE_URL")


def _admin_settings(*, prints_key: bool = False):  # type: ignore[no-untyped-def]
    """The settings of an operator command: the environment's when it names a database; else the dev
    stack running from the data dir (`make run`), with its database and secret. A key made with a secret
    the server does not use would be rejected with 401, so such a key is never made."""
    from coordinator.config import DEFAULT_SECRET
    from coordinator.devstack import project_data_dir, running_stack

    settings = None
    if not any(os.environ.get(name) for name in DATABASE_VARIABLES):
        stack = running_stack(project_data_dir())
        if stack is not None:
            typer.echo(f"using the dev stack running from {stack['root']} ({stack['url']})", err=True)
            settings = _settings(
                env="development",
                database_url=stack["database_url"],
                secret_key=os.environ.get("COORDINATOR_SECRET_KEY") or stack["secret_key"],
            )
    if settings is None:
        settings = _settings()
        if prints_key and settings.secret_key == DEFAULT_SECRET:
            typer.echo(
                "refusing to print an API key made with the default secret: set COORDINATOR_SECRET_KEY to "
                "the server's secret (keys are checked against it), or run next to a `make run` stack",
                err=True,
            )
            raise typer.Exit(2)
    return settings


def _with_runtime(coro_factory, *, prints_key: bool = False):  # type: ignore[no-untyped-def]
    from coordinator.app import build_runtime

    settings = _admin_settings(prints_key=prints_key)

    async def runner():  # type: ignore[no-untyped-def]
        runtime = build_runtime(settings)
        try:
            return await coro_factory(runtime)
        finally:
            await runtime.db.dispose()

    return asyncio.run(runner())


@admin_app.command("create-user")
def create_user(
    email: str,
    admin: Annotated[bool, typer.Option("--admin", help="Give the user the admin role.")] = False,
    credits: Annotated[str, typer.Option(help="Credits to grant.")] = "10000",
    api_key: Annotated[bool, typer.Option("--api-key", help="Also create an API key and print it.")] = False,
) -> None:
    """Create a user (or update the role of an existing one)."""
    from coordinator.accounts import service as accounts

    try:
        amount = Decimal(credits)
    except InvalidOperation:
        typer.echo("credits must be a number", err=True)
        raise typer.Exit(2) from None

    async def body(runtime):  # type: ignore[no-untyped-def]
        async with runtime.db.transaction() as session:
            user = await accounts.get_user_by_email(session, email)
            if user is None:
                user = await accounts.create_user(session, email, credits=amount, admin=admin)
            elif admin:
                await accounts.set_admin(session, user, True)
            typer.echo(f"user {user.id} {user.email} role={user.role}")
            if api_key:
                _, plaintext = await accounts.create_api_key(
                    session, runtime.settings.secret_key, user, "created by admin"
                )
                typer.echo(f"API key: {plaintext}")

    with contextlib.suppress(KeyboardInterrupt):
        _with_runtime(body, prints_key=api_key)


@admin_app.command("island-credentials")
def island_credentials(
    host_id: str,
    revoke: Annotated[bool, typer.Option("--revoke", help="Revoke the Island's credential instead.")] = False,
) -> None:
    """Issue (or --revoke) an Island's own NATS credential; prints the `nats_url` for its config once."""
    import uuid

    from coordinator.hosts import nats_access

    try:
        parsed = uuid.UUID(host_id)
    except ValueError:
        typer.echo("HOST_ID must be the Island's UUID", err=True)
        raise typer.Exit(2) from None

    async def body(runtime):  # type: ignore[no-untyped-def]
        async with runtime.db.transaction() as session:
            if revoke:
                count = await nats_access.revoke_credentials(session, parsed, owner_id=None)
                typer.echo(f"revoked: {count}")
                return
            issued = await nats_access.issue_credential(
                session, runtime.settings.secret_key, parsed, owner_id=None, actor_id=None
            )
        typer.echo(f"user: {issued.user}")
        typer.echo(f"password: {issued.password}")
        url = nats_access.island_url(runtime.settings.island_nats_url, issued.user, issued.password)
        typer.echo(f"nats_url: {url}")

    from coordinator.errors import DomainError

    try:
        _with_runtime(body)
    except DomainError as exc:  # an unknown Island
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


@admin_app.command("grant-credits")
def grant_credits(email: str, amount: str) -> None:
    """Grant credits to a user (recorded in the ledger)."""
    from coordinator.accounts import service as accounts
    from coordinator.billing import ledger

    async def body(runtime):  # type: ignore[no-untyped-def]
        async with runtime.db.transaction() as session:
            user = await accounts.get_user_by_email(session, email)
            if user is None:
                typer.echo("no such user", err=True)
                raise typer.Exit(1)
            balance = await ledger.grant(session, user.id, Decimal(amount), "granted by admin")
            typer.echo(f"balance: {balance}")

    _with_runtime(body)


@admin_app.command("seed")
def seed() -> None:
    """Insert the default Cargos that are missing."""
    from coordinator.workloads.service import seed_default_cargos

    async def body(runtime):  # type: ignore[no-untyped-def]
        async with runtime.db.transaction() as session:
            typer.echo(f"inserted {await seed_default_cargos(session)} Cargos")

    _with_runtime(body)
