"""`/socket/websocket`: the Phoenix socket endpoint — credential check before the upgrade, then serve.

The credential is `params.token` (query parameter `token`) or phoenix.js's `authToken` (the
`base64url.bearer.phx.<token>` WebSocket subprotocol): an API key, a web session token, or an Island
device token. A missing or bad one refuses the upgrade with 403 before any frame."""

from __future__ import annotations

import base64
import binascii
import uuid

from fastapi import APIRouter, WebSocket

from coordinator.accounts import service as accounts
from coordinator.hosts import devices
from coordinator.runtime import Runtime
from coordinator.web.channels.island_channel import IslandChannel
from coordinator.web.channels.job_channel import JobChannel
from coordinator.web.channels.registry import CLOSE_REVOKED
from coordinator.web.channels.socket import ChannelFactory, ChannelSocket, Device, Identity
from coordinator.web.channels.user_channel import UserChannel

router = APIRouter()

FACTORIES: dict[str, ChannelFactory] = {"job": JobChannel, "user": UserChannel, "island": IslandChannel}
AUTH_PROTOCOL_PREFIX = "base64url.bearer.phx."


def credential_of(websocket: WebSocket) -> tuple[str | None, str | None]:
    """The token, and the subprotocol to accept (phoenix.js sends `phoenix` beside its auth token)."""
    token = websocket.query_params.get("token")
    protocols = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",")]
    accepted = "phoenix" if "phoenix" in protocols else None
    for proto in protocols:
        if proto.startswith(AUTH_PROTOCOL_PREFIX) and token is None:
            encoded = proto[len(AUTH_PROTOCOL_PREFIX) :]
            try:
                token = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (binascii.Error, UnicodeDecodeError):
                return None, accepted
    return token, accepted


async def authenticate(runtime: Runtime, token: str) -> Identity | None:
    secret = runtime.settings.secret_key
    if devices.is_device_token(token):
        async with runtime.db.transaction() as session:
            device = await devices.authenticate_device(session, secret, token)
        return None if device is None else Identity(device=Device(str(device.host_id), str(device.token_id)))
    if token.startswith(accounts.API_KEY_PREFIX):
        async with runtime.db.read() as session:
            principal = await accounts.authenticate_api_key(session, secret, token)
    else:
        async with runtime.db.session() as session:
            principal = await accounts.authenticate_session(
                session, secret, token, ttl_days=runtime.settings.session_ttl_days
            )
    return None if principal is None else Identity(principal=principal)


@router.websocket("/socket/websocket")
async def phoenix_socket(websocket: WebSocket) -> None:
    runtime: Runtime = websocket.app.state.runtime
    token, subprotocol = credential_of(websocket)
    identity = await authenticate(runtime, token) if token else None
    if identity is None:
        await websocket.close(code=1008)  # before accept: the server answers the upgrade with 403
        return
    await websocket.accept(subprotocol=subprotocol)
    socket = ChannelSocket(
        websocket, runtime, identity, FACTORIES, idle_timeout=runtime.settings.channel_idle_timeout_seconds
    )
    registry = runtime.channels
    device = identity.device
    if device is not None:
        await registry.ensure_attached()
        registry.add_device_socket(device.token_id, socket)
        async with runtime.db.read() as session:  # revoked while we were subscribing?
            if not await devices.token_is_live(session, uuid.UUID(device.token_id)):
                await socket.close(CLOSE_REVOKED, "device token revoked")
    try:
        await socket.serve()
    finally:
        if device is not None:
            registry.remove_device_socket(device.token_id, socket)
