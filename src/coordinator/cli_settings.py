"""The settings of a command: the environment's, with a configuration error reported in one line (exit 2)."""

from __future__ import annotations

import typer

from coordinator.config import Settings


def load_settings(**overrides: object) -> Settings:
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        typer.echo(f"configuration error: {exc.errors()[0]['msg']}", err=True)
        raise typer.Exit(2) from None
