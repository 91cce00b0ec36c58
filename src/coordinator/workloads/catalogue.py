"""The Cargo catalogue as submissions see it: each Cargo's checked-and-priced columns, cached per process.

A cached entry is never trusted on its own: the submit statement charges only if the Cargo's `revision`
(bumped by a trigger whenever one of these columns changes, migration 0015) is still the one cached, and a
refusal based on a cached entry is re-checked against a fresh read. So the cache saves the read on every
submit and is never stale where it matters, on any replica, with nothing to broadcast."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from coordinator.errors import NotFound
from coordinator.repo.database import Database

LOAD_SQL = text(
    """
    SELECT id, slug, runtime, kind, required_ram_mb, required_vram_mb, required_cpu_cores, platforms,
           price_per_job, input_schema, is_enabled, suspended_at, revision
    FROM workloads WHERE slug = :slug
    """
)


@dataclass(frozen=True, slots=True)
class Cargo:
    id: int
    slug: str
    runtime: str
    kind: str
    required_ram_mb: int
    required_vram_mb: int
    required_cpu_cores: int
    platforms: tuple[str, ...]
    price_per_job: Decimal
    input_schema: dict[str, Any] | None
    is_enabled: bool
    suspended_at: datetime | None
    revision: int


class Catalogue:
    """Slug → `Cargo`, loaded on first use; `load` reads again (after the submit statement saw a newer
    revision, or to re-check a refusal). Unknown slugs are not remembered; at most `limit` entries."""

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._cargos: dict[str, Cargo] = {}

    def cached(self, slug: str) -> Cargo | None:
        return self._cargos.get(slug)

    async def get(self, db: Database, slug: str) -> Cargo:
        return self._cargos.get(slug) or await self.load(db, slug)

    async def load(self, db: Database, slug: str) -> Cargo:
        """The Cargo as the database has it now (NotFound when there is none), remembered."""
        async with db.read() as session:
            row = (await session.execute(LOAD_SQL, {"slug": slug})).first()
        if row is None:
            self._cargos.pop(slug, None)
            raise NotFound("Cargo not found")
        cargo = Cargo(
            id=row.id,
            slug=row.slug,
            runtime=row.runtime,
            kind=row.kind or "generic",
            required_ram_mb=row.required_ram_mb or 0,
            required_vram_mb=row.required_vram_mb or 0,
            required_cpu_cores=row.required_cpu_cores or 0,
            platforms=tuple(row.platforms or ()),
            price_per_job=Decimal(row.price_per_job),
            input_schema=row.input_schema,
            is_enabled=row.is_enabled,
            suspended_at=row.suspended_at,
            revision=row.revision,
        )
        if len(self._cargos) >= self.limit:
            self._cargos.clear()
        self._cargos[slug] = cargo
        return cargo
