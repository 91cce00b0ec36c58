"""What lets my Islands in, on `/settings/islands`: the device tokens of my phone and browser Islands
(listed, revoked — the device's socket closes at once) and per-Island NATS credentials (issued with the
password shown once in a ready `nats_url`, revoked — live connections are cut). Owner only: another
account's Island is refused (403) and its device token "not found"."""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from coordinator.accounts.service import Principal
from coordinator.errors import NotFound
from coordinator.hosts import devices, nats_access, owners
from coordinator.hosts.models import HostNatsCredential
from coordinator.web.pages.base import PageRoute, check_csrf, redirect, render, runtime_of, signed_in
from coordinator.web.pages.fleet import heartbeat_age

log = structlog.get_logger(__name__)
router = APIRouter(route_class=PageRoute, include_in_schema=False)


async def islands_context(request: Request, principal: Principal) -> dict[str, Any]:
    """My Islands with their live NATS credential (if any), and my device tokens."""
    async with runtime_of(request).db.read() as session:
        mine = await owners.list_owned_hosts(session, principal.user.id)
        ids = [h.id for h in mine]
        live: list[HostNatsCredential] = []
        if ids:
            query = select(HostNatsCredential).where(
                HostNatsCredential.host_id.in_(ids), HostNatsCredential.revoked_at.is_(None)
            )
            live = list(await session.scalars(query))
        tokens = await devices.list_device_tokens(session, principal.user.id)
    credentials = {c.host_id: c for c in live}
    rows = [
        {"host": h, "age": heartbeat_age(h.last_heartbeat_at), "nats": credentials.get(h.id)} for h in mine
    ]
    return {"islands": rows, "owner_reason": owners.OWNER_SUSPENSION, "device_tokens": tokens}


def _host_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound("Island not found") from None


@router.post("/settings/islands/devices/{token_id}/revoke", dependencies=[Depends(check_csrf)])
async def revoke_device_token(
    token_id: str, request: Request, principal: Principal = Depends(signed_in)
) -> Response:
    runtime = runtime_of(request)
    async with runtime.db.transaction() as session:
        token = await devices.revoke_device_token(session, principal.user.id, token_id)
    await runtime.channels.revoke(str(token.id))
    return redirect("/settings/islands")


@router.post("/settings/islands/{host_id}/nats-credentials", dependencies=[Depends(check_csrf)])
async def issue_nats_credential(
    host_id: str, request: Request, principal: Principal = Depends(signed_in)
) -> HTMLResponse:
    """A new NATS credential for my Island (the previous one is revoked); the password is on this
    response only."""
    runtime = runtime_of(request)
    async with runtime.db.transaction() as session:
        issued = await nats_access.issue_credential(
            session,
            runtime.settings.secret_key,
            _host_id(host_id),
            owner_id=principal.user.id,
            actor_id=principal.user.id,
        )
    url = nats_access.island_url(runtime.settings.island_nats_url, issued.user, issued.password)
    context = await islands_context(request, principal)
    context["issued"] = {"host_id": str(issued.host_id), "user": issued.user, "nats_url": url}
    response = render(request, "islands.html", context, status_code=201)
    response.headers["Cache-Control"] = "no-store"  # the password must not stay in a cache
    return response


@router.post("/settings/islands/{host_id}/nats-credentials/revoke", dependencies=[Depends(check_csrf)])
async def revoke_nats_credential(
    host_id: str, request: Request, principal: Principal = Depends(signed_in)
) -> Response:
    runtime = runtime_of(request)
    parsed = _host_id(host_id)
    async with runtime.db.transaction() as session:
        revoked = await nats_access.revoke_credentials(session, parsed, owner_id=principal.user.id)
    if revoked and runtime.settings.nats_auth_enabled:
        from coordinator.nats.auth_callout import kick_host_connections

        try:
            await kick_host_connections(runtime.settings.nats_url or "", str(parsed))
        except Exception:  # revoked anyway: refused at the next connect
            log.warning("nats.kick_failed", host_id=str(parsed))
    return redirect("/settings/islands")
