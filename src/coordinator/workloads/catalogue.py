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

# The columns an AssignJob carries as they are stored (`jobs.assignment.assign_job_message`).
ASSIGN_JOB_COLUMNS = (
    "container_image",
    "image_digest",
    "wasm_url",
    "wasm_hash",
    "model_url",
    "model_hash",
    "onnx_task_type",
)
COLUMNS = f"""
    SELECT id, slug, runtime, kind, required_ram_mb, required_vram_mb, required_cpu_cores, platforms,
           price_per_job, input_schema, is_enabled, suspended_at, revision, trust_level,
           cold_start_seconds, {", ".join(ASSIGN_JOB_COLUMNS)}
    FROM workloads
"""
LOAD_SQL = text(COLUMNS + " WHERE slug = :key")
LOAD_BY_ID_SQL = text(COLUMNS + " WHERE id = :key")


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
    # What an AssignJob carries (`ASSIGN_JOB_COLUMNS` and these), for a submit that assigns at once.
    trust_level: int
    cold_start_seconds: int
    container_image: str | None
    image_digest: str | None
    wasm_url: str | None
    wasm_hash: str | None
    model_url: str | None
    model_hash: str | None
    onnx_task_type: str | None


class Catalogue:
    """Slug → `Cargo`, loaded on first use; `load` reads again (after the submit statement saw a newer
    revision, or to re-check a refusal). Also by id, for the kind and runtime that job events carry (a
    label, never checked against: read once). Unknown Cargos are not remembered; at most `limit` each."""

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._cargos: dict[str, Cargo] = {}
        self._by_id: dict[int, Cargo] = {}

    def cached(self, slug: str) -> Cargo | None:
        return self._cargos.get(slug)

    async def load(self, db: Database, slug: str) -> Cargo:
        """The Cargo as the database has it now (NotFound when there is none), remembered."""
        cargo = await self._read(db, LOAD_SQL, slug)
        if cargo is None:
            self._cargos.pop(slug, None)
            raise NotFound("Cargo not found")
        self._remember(self._cargos, slug, cargo)
        return cargo

    async def by_id(self, db: Database, workload_id: int) -> Cargo:
        """The Cargo with this id, read once per process."""
        if (cargo := self._by_id.get(workload_id)) is None:
            if (cargo := await self._read(db, LOAD_BY_ID_SQL, workload_id)) is None:
                raise NotFound("Cargo not found")
            self._remember(self._by_id, workload_id, cargo)
        return cargo

    def _remember(self, entries: dict[Any, Cargo], key: Any, cargo: Cargo) -> None:
        if len(entries) >= self.limit:
            entries.clear()
        entries[key] = cargo

    @staticmethod
    async def _read(db: Database, query: Any, key: str | int) -> Cargo | None:
        async with db.read() as session:
            row = (await session.execute(query, {"key": key})).first()
        if row is None:
            return None
        return Cargo(
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
            trust_level=int(row.trust_level),
            cold_start_seconds=int(row.cold_start_seconds or 0),
            **{name: getattr(row, name) for name in ASSIGN_JOB_COLUMNS},
        )
