"""Device pairing and device tokens of channel Islands (phones, browsers): channels spec §4.

`POST /devices/pairing` and `POST /devices/token` are called by the device, without a credential; the
owner enters the code with `POST /hosts/pair` (or on the web) and manages the tokens here."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from coordinator.accounts.service import Principal
from coordinator.hosts import devices
from coordinator.hosts.models import DeviceToken
from coordinator.web.auth import get_runtime, require_read, require_write
from coordinator.web.errors import error_responses

router = APIRouter(tags=["devices"])


class PairingRequest(BaseModel):
    platform: str | None = Field(None, max_length=30, description="ios, android or browser")
    name: str | None = Field(None, max_length=200)


class PairingStarted(BaseModel):
    code: str
    expires_in_seconds: int
    poll_token: str


class TokenRequest(BaseModel):
    poll_token: str = Field(min_length=1, max_length=200)


class DeviceTokenIssued(BaseModel):
    host_id: str
    device_token: str
    expires_at: datetime


class DeviceTokenView(BaseModel):
    id: str
    host_id: str
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class DeviceTokenList(BaseModel):
    data: list[DeviceTokenView]


class DeviceTokenOne(BaseModel):
    data: DeviceTokenView


def view(token: DeviceToken) -> DeviceTokenView:
    return DeviceTokenView(
        id=str(token.id),
        host_id=str(token.host_id),
        created_at=token.created_at,
        expires_at=token.expires_at,
        last_used_at=token.last_used_at,
        revoked_at=token.revoked_at,
    )


@router.post(
    "/api/v1/devices/pairing",
    status_code=201,
    response_model=PairingStarted,
    responses=error_responses(422),
)
async def start_pairing(body: PairingRequest, request: Request) -> PairingStarted:
    """A new phone or browser Island asks to be paired: show `code` to its owner, then poll
    `POST /devices/token` with `poll_token`."""
    runtime = get_runtime(request)
    settings = runtime.settings
    async with runtime.db.transaction() as session:
        started = await devices.start_pairing(
            session,
            approval_required=settings.approval_required,
            ttl_seconds=settings.pairing_code_ttl_seconds,
            platform=body.platform,
            name=body.name,
            secret_key=settings.secret_key,
        )
    return PairingStarted(
        code=started.code, expires_in_seconds=started.expires_in_seconds, poll_token=started.poll_token
    )


@router.post(
    "/api/v1/devices/token",
    response_model=DeviceTokenIssued,
    responses=error_responses(404, 410, 422),
)
async def exchange_token(body: TokenRequest, request: Request) -> DeviceTokenIssued:
    """The device token once the owner entered the code (404 before; 410 after expiry or a second
    exchange). Valid 30 days, sliding on every socket connect."""
    runtime = get_runtime(request)
    async with runtime.db.transaction() as session:
        issued = await devices.exchange_poll_token(session, runtime.settings.secret_key, body.poll_token)
    return DeviceTokenIssued(
        host_id=str(issued.host_id), device_token=issued.device_token, expires_at=issued.expires_at
    )


@router.get("/api/v1/devices", response_model=DeviceTokenList, responses=error_responses(401, 403, 429))
async def list_devices(request: Request, principal: Principal = Depends(require_read)) -> DeviceTokenList:
    """The caller's device tokens (never the secrets), newest first."""
    async with get_runtime(request).db.read() as session:
        tokens = await devices.list_device_tokens(session, principal.user.id)
    return DeviceTokenList(data=[view(t) for t in tokens])


@router.delete(
    "/api/v1/devices/{token_id}", response_model=DeviceTokenOne, responses=error_responses(401, 403, 404, 429)
)
async def revoke_device(
    token_id: str, request: Request, principal: Principal = Depends(require_write)
) -> DeviceTokenOne:
    """Revoke a device token: the device's socket (on any replica) is closed at once."""
    runtime = get_runtime(request)
    async with runtime.db.transaction() as session:
        token = await devices.revoke_device_token(session, principal.user.id, token_id)
    await runtime.channels.revoke(str(token.id))
    return DeviceTokenOne(data=view(token))
