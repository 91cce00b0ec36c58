"""JSON shapes of the client API (client-api §3): snake_case, ISO-8601 timestamps, numbers as numbers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from coordinator.accounts.models import ApiKey, User


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def account(user: User) -> dict[str, Any]:
    return {
        "id": str(user.id),
        "email": user.email,
        "credits": float(user.credits),
        "role": user.role,
        "verification_status": user.verification_status,
        "created_at": iso(user.created_at),
    }


def api_key(key: ApiKey) -> dict[str, Any]:
    return {
        "id": str(key.id),
        "name": key.name,
        "prefix": key.prefix,
        "scopes": list(key.scopes),
        "created_at": iso(key.created_at),
        "last_used_at": iso(key.last_used_at),
        "expires_at": iso(key.expires_at),
    }
