"""`POST/DELETE /api/v1/hosts/{id}/nats-credentials`: an Island owner's per-Island NATS credential.

POST issues one (revoking the previous) and returns the password once, with a ready `nats_url` for the
Island's config; DELETE revokes it (refused at the next connect; live connections are disconnected)."""

from __future__ import annotations

import uuid
from datetime import datetime

import structlog
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from coordinator.accounts.service import Principal
from coordinator.errors import NotFound
from coordinator.hosts import nats_access
from coordinator.web.auth import get_runtime, require_write
from coordinator.web.errors import error_responses

log = structlog.get_logger(__name__)
router = APIRouter(tags=["hosts"])


class NatsCredential(BaseModel):
    host_id: str
    user: str
    password: str
    nats_url: str
    created_at: datetime


class NatsCredentialAnswer(BaseModel):
    data: NatsCredential


class RevokedAnswer(BaseModel):
    class Data(BaseModel):
        host_id: str
        revoked: int
        disconnected: int

    data: Data


def _host_id(raw: str) -> uuid.UUID:
    try:
        host_id = uuid.UUID(raw)
    except ValueError:
        raise NotFound("Island not found") from None
    return host_id


@router.post(
    "/api/v1/hosts/{host_id}/nats-credentials",
    status_code=201,
    response_model=NatsCredentialAnswer,
    responses=error_responses(401, 403, 404, 429),
)
async def issue_nats_credential(
    host_id: str, request: Request, principal: Principal = Depends(require_write)
) -> NatsCredentialAnswer:
    runtime = get_runtime(request)
    owner = None if principal.is_admin else principal.user.id
    async with runtime.db.transaction() as session:
        issued = await nats_access.issue_credential(
            session,
            runtime.settings.secret_key,
            _host_id(host_id),
            owner_id=owner,
            actor_id=principal.user.id,
        )
    url = nats_access.island_url(runtime.settings.island_nats_url, issued.user, issued.password)
    return NatsCredentialAnswer(
        data=NatsCredential(
            host_id=str(issued.host_id),
            user=issued.user,
            password=issued.password,
            nats_url=url,
            created_at=issued.created_at,
        )
    )


@router.delete(
    "/api/v1/hosts/{host_id}/nats-credentials",
    response_model=RevokedAnswer,
    responses=error_responses(401, 403, 404, 429),
)
async def revoke_nats_credential(
    host_id: str, request: Request, principal: Principal = Depends(require_write)
) -> RevokedAnswer:
    runtime = get_runtime(request)
    owner = None if principal.is_admin else principal.user.id
    parsed = _host_id(host_id)
    async with runtime.db.transaction() as session:
        revoked = await nats_access.revoke_credentials(session, parsed, owner_id=owner)
    disconnected = 0
    if revoked and runtime.settings.nats_auth_enabled:
        from coordinator.nats.auth_callout import kick_host_connections

        try:
            disconnected = await kick_host_connections(runtime.settings.nats_url or "", str(parsed))
        except Exception:  # revoked anyway: refused at the next connect, and its user JWT expires
            log.warning("nats.kick_failed", host_id=str(parsed))
    return RevokedAnswer(
        data=RevokedAnswer.Data(host_id=str(parsed), revoked=revoked, disconnected=disconnected)
    )
