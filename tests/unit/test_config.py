"""Settings: env names, URL normalisation, and the refusal to run production with the default secret."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from coordinator.config import DEFAULT_SECRET, Settings


def test_production_refuses_the_default_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COORDINATOR_SECRET_KEY", raising=False)
    monkeypatch.setenv("COORDINATOR_ENV", "production")
    with pytest.raises(ValidationError, match="COORDINATOR_SECRET_KEY"):
        Settings()
    monkeypatch.setenv("COORDINATOR_SECRET_KEY", "a-real-secret")
    assert Settings().secret_key == "a-real-secret"


def test_development_accepts_the_default_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COORDINATOR_ENV", "development")
    monkeypatch.delenv("COORDINATOR_SECRET_KEY", raising=False)
    assert Settings().secret_key == DEFAULT_SECRET


def test_database_url_is_read_from_DATABASE_URL_and_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COORDINATOR_ENV", "development")
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db:5432/coord")
    settings = Settings()
    assert settings.database_url == "postgresql+psycopg://u:p@db:5432/coord"
    assert settings.libpq_database_url == "postgresql://u:p@db:5432/coord"


@pytest.mark.parametrize(
    ("url", "disabled", "enabled"),
    [(None, None, False), ("nats://n:4222", None, True), ("nats://n:4222", "true", False), ("", None, False)],
)
def test_nats_is_enabled_only_with_a_url_and_not_disabled(
    monkeypatch: pytest.MonkeyPatch, url: str | None, disabled: str | None, enabled: bool
) -> None:
    monkeypatch.setenv("COORDINATOR_ENV", "development")
    for name, value in (("NATS_URL", url), ("NATS_DISABLED", disabled)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert Settings().nats_enabled is enabled


def test_host_approval_defaults_on_in_production_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COORDINATOR_SECRET_KEY", "s")
    monkeypatch.setenv("COORDINATOR_ENV", "production")
    assert Settings().approval_required is True
    monkeypatch.setenv("COORDINATOR_ENV", "development")
    assert Settings().approval_required is False
    monkeypatch.setenv("COORDINATOR_REQUIRE_HOST_APPROVAL", "true")
    assert Settings().approval_required is True
