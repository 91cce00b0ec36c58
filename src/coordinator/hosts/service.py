"""The hosts context: registration, approval, suspension, look-ups and the fleet loaded from the database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.errors import NotFound
from coordinator.hosts import rules
from coordinator.hosts.fleet import FleetView, view_of
from coordinator.hosts.models import Host
from coordinator.protocol.messages import RegisterHost

# Registration: insert a new Island or refresh the capabilities of a known one (one round trip).
REGISTER_SQL = text(
    """
    INSERT INTO hosts (id, status, approved, agent_version, gpu_model, gpu_vram_mb, cpu_cores, ram_mb,
                       region, last_heartbeat_at)
    VALUES (:id, :status, :approved, :version, :gpu_model, :gpu_vram_mb, :cpu_cores, :ram_mb, :region, now())
    ON CONFLICT (id) DO UPDATE SET
        agent_version = EXCLUDED.agent_version, gpu_model = EXCLUDED.gpu_model,
        gpu_vram_mb = EXCLUDED.gpu_vram_mb, cpu_cores = EXCLUDED.cpu_cores, ram_mb = EXCLUDED.ram_mb,
        region = EXCLUDED.region, last_heartbeat_at = now(), updated_at = now(),
        status = CASE WHEN hosts.status = 'suspended' THEN 'suspended'
                      WHEN hosts.approved THEN 'online' ELSE 'pending_approval' END
    RETURNING *
    """
)

# A host first seen through a heartbeat or a pairing request (its registration was lost).
ENSURE_SQL = text(
    """
    INSERT INTO hosts (id, status, approved) VALUES (:id, :status, :approved)
    ON CONFLICT (id) DO NOTHING
    """
)


def parse_host_id(raw: str) -> uuid.UUID | None:
    """Island ids are UUID strings; anything else cannot be stored and is refused."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


async def register_host(session: AsyncSession, message: RegisterHost, *, approval_required: bool) -> Host:
    host_id = parse_host_id(message.host_id)
    if host_id is None:
        raise NotFound("Island id is not a UUID")
    status, approved = rules.initial_status(approval_required)
    caps = message.capabilities
    row = await session.execute(
        REGISTER_SQL,
        {
            "id": host_id,
            "status": status,
            "approved": approved,
            "version": message.version[:30],
            "gpu_model": caps.gpu_model[:200] if caps.gpu_model else None,
            "gpu_vram_mb": caps.gpu_vram_mb,
            "cpu_cores": caps.cpu_cores,
            "ram_mb": caps.ram_mb,
            "region": caps.region[:50] if caps.region else None,
        },
    )
    host_row = row.one()
    return await _by_id(session, host_row.id)


async def ensure_host(session: AsyncSession, host_id: uuid.UUID, *, approval_required: bool) -> Host:
    status, approved = rules.initial_status(approval_required)
    await session.execute(ENSURE_SQL, {"id": host_id, "status": status, "approved": approved})
    return await _by_id(session, host_id)


async def _by_id(session: AsyncSession, host_id: uuid.UUID) -> Host:
    host = (await session.execute(select(Host).where(Host.id == host_id))).scalar_one_or_none()
    if host is None:
        raise NotFound("Island not found")
    await session.refresh(host)
    return host


async def get_host(session: AsyncSession, raw_id: str) -> Host:
    host_id = parse_host_id(raw_id)
    if host_id is None:
        raise NotFound("Island not found")
    return await _by_id(session, host_id)


async def list_hosts(session: AsyncSession, *, status: str | None = None) -> list[Host]:
    query = select(Host).order_by(Host.created_at, Host.id)
    if status:
        query = query.where(Host.status == status)
    return list((await session.execute(query)).scalars())


async def list_visible_hosts(session: AsyncSession, viewer_id: int, is_admin: bool) -> list[Host]:
    query = select(Host).order_by(Host.created_at, Host.id)
    if not is_admin:
        query = query.where(
            ((Host.status == "online") & Host.approved.is_(True)) | (Host.owner_id == viewer_id)
        )
    return list((await session.execute(query)).scalars())


async def load_fleet(session: AsyncSession, fleet: FleetView) -> int:
    """Fill the fleet view from the database (start-up). Islands count as silent until they beat."""
    hosts = await list_hosts(session)
    for host in hosts:
        view = view_of(host)
        if view.status == "online":
            view.status = "offline"  # proven online by its next heartbeat, within 10 s
        fleet.put(view)
    return len(hosts)


# Online, approved Islands that beat within the timeout, with their age (seconds since the last beat).
RECENT_HOSTS_SQL = text(
    """
    SELECT id, owner_id, status, approved, region, platform, transport, gpu_model, gpu_vram_mb, cpu_cores,
           ram_mb, supported_runtimes, max_concurrent, active_jobs, warm_workload_ids, asking_prices,
           rtt_ms, karma, EXTRACT(EPOCH FROM now() - last_heartbeat_at) AS age
    FROM hosts
    WHERE status = 'online' AND approved AND suspended_at IS NULL
      AND last_heartbeat_at > now() - make_interval(secs => :timeout)
    """
)


async def hydrate_fleet(session: AsyncSession, fleet: FleetView) -> bool:
    """Add the Islands the database saw beat recently but this process has not (yet): after a restart the
    in-memory view is empty until the next heartbeats. Fresher views are kept; True if any was added."""
    rows = (await session.execute(RECENT_HOSTS_SQL, {"timeout": fleet.heartbeat_timeout})).all()
    added = False
    for row in rows:
        seen = fleet.clock() - float(row.age or 0)
        view = fleet.get(row.id)
        if view is not None:
            view.last_heartbeat_monotonic = max(view.last_heartbeat_monotonic, seen)
            continue
        fleet.put(view_of(row, last_heartbeat=seen))
        added = True
    return added


# The candidate Islands' rows, locked while their capacity is counted: concurrent dispatchers (other
# replicas) serialise per Island, so none is overfilled.
def locked_hosts_sql(ids: str) -> str:
    """A query that locks the rows of the Islands `ids` (an array expression) for the rest of the
    transaction, in id order (the order every transaction locking several takes), and returns the ids of
    those that exist. Part of the dispatcher's claim (`jobs.repository.CLAIM_QUEUED_SQL`)."""
    return f"SELECT id FROM hosts WHERE id = ANY({ids}) ORDER BY id FOR NO KEY UPDATE"


async def set_approved(session: AsyncSession, raw_id: str) -> Host:
    host = await get_host(session, raw_id)
    host.approved = True
    if host.status == "pending_approval":
        host.status = "offline"
    return host


async def suspend(session: AsyncSession, raw_id: str, reason: str | None) -> Host:
    host = await get_host(session, raw_id)
    host.status = "suspended"
    host.suspended_at = datetime.now(UTC)
    host.suspension_reason = reason
    return host


async def resume(session: AsyncSession, raw_id: str) -> Host:
    host = await get_host(session, raw_id)
    if host.status == "suspended":
        host.status = "offline" if host.approved else "pending_approval"
    host.suspended_at = None
    host.suspension_reason = None
    return host


def sync_view(fleet: FleetView, host: Host) -> None:
    """Carry a decision made through this process (approve, suspend, resume, pair) into its fleet view."""
    if fleet.get(host.id) is None:
        fleet.put(view_of(host))
    else:
        fleet.apply_decision(host.id, host.status, host.approved, host.owner_id)


# Decisions changed since a point in time (other replicas' approvals, suspensions, pairings).
CHANGED_SINCE_SQL = text(
    """
    SELECT id, status, approved, owner_id, updated_at FROM hosts
    WHERE updated_at > :since ORDER BY updated_at
    """
)


async def sync_decisions(session: AsyncSession, fleet: FleetView, since: datetime) -> datetime:
    """Apply every host row changed after `since` to the fleet view; returns the newest change seen."""
    newest = since
    for row in await session.execute(CHANGED_SINCE_SQL, {"since": since}):
        fleet.apply_decision(row.id, row.status, row.approved, row.owner_id)
        newest = max(newest, row.updated_at)
    return newest


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def public_view(host: Host, *, viewer_id: int | None = None, is_admin: bool = False) -> dict[str, Any]:
    """The Host object of the client API (client-api §3.8); owner-only details only for owner or admin."""
    view: dict[str, Any] = {
        "id": str(host.id),
        "name": host.name or f"island-{str(host.id)[:8]}",
        "status": host.status,
        "region": host.region,
        "capabilities": {
            "gpu_model": host.gpu_model,
            "gpu_vram_mb": host.gpu_vram_mb,
            "cpu_cores": host.cpu_cores,
            "ram_mb": host.ram_mb,
            "supported_runtimes": list(host.supported_runtimes or []),
            "max_concurrent_containers": host.max_concurrent,
        },
        "karma_score": float(host.karma),
        "last_heartbeat_at": _iso(host.last_heartbeat_at),
    }
    if is_admin or (viewer_id is not None and host.owner_id == viewer_id):
        view.update(
            {
                "approved": host.approved,
                "owner_id": str(host.owner_id) if host.owner_id is not None else None,
                "agent_version": host.agent_version,
                "active_jobs": host.active_jobs,
                "asking_prices": host.asking_prices or {},
                "rtt_ms": host.rtt_ms,
                "paired_at": _iso(host.paired_at),
                "suspended_at": _iso(host.suspended_at),
                "suspension_reason": host.suspension_reason,
                "earnings_total": float(host.earnings_total),
            }
        )
    return view
