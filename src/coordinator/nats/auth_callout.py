"""The NATS auth-callout service (nats-server ≥ 2.10): answers `$SYS.REQ.USER.AUTH` requests.

The server sends, for every CONNECT by a user that is not one of its static `auth_users`, a JWT signed by
the server (`nats.connect_opts` holds the user/password, `nats.user_nkey` the key to issue for,
`nats.server_id.id` the server). We answer with a JWT signed by the callout issuer, carrying either a user
JWT (account, name, permissions from `hosts.nats_access`) or an error (the connection is refused).
Replicas answer in one queue group, so each request is answered once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import structlog

from coordinator.hosts import nats_access
from coordinator.nats import nkey_jwt
from coordinator.runtime import Runtime
from coordinator.supervisor import Child

log = structlog.get_logger(__name__)

AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"
QUEUE = "coordinator-auth-callout"
# A granted user JWT lives this long; the server disconnects it then, and the Island reconnects through
# the callout again (so a revoked credential is gone after at most this long even without a kick).
USER_JWT_TTL_SECONDS = 24 * 3600


def user_claims(grant: nats_access.Grant, user_nkey: str) -> dict[str, Any]:
    nats: dict[str, Any] = {
        **grant.permissions(),
        "subs": -1,
        "data": -1,
        "payload": -1,
        "type": "user",
        "version": 2,
    }
    if grant.tags:
        nats["tags"] = list(grant.tags)
    return {
        "sub": user_nkey,
        "aud": grant.account,
        "name": grant.name,
        "exp": int(time.time()) + USER_JWT_TTL_SECONDS,
        "nats": nats,
    }


def coordinator_password(nats_url: str | None) -> str | None:
    """The password in the coordinator's own NATS URL userinfo (its system-account user uses it)."""
    if not nats_url or "@" not in nats_url:
        return None
    userinfo = nats_url.partition("://")[2].rpartition("@")[0]
    from urllib.parse import unquote

    return unquote(userinfo.partition(":")[2]) or None


class AuthCallout:
    """Decides and signs; also usable without the supervisor (tests, benchmark)."""

    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings
        if not settings.nats_auth_issuer_seed:
            raise RuntimeError("the auth callout needs COORDINATOR_NATS_AUTH_ISSUER_SEED")
        self.runtime = runtime
        self.seed = settings.nats_auth_issuer_seed
        self.issuer = nkey_jwt.public_key(self.seed)
        self.config = nats_access.AccessConfig(
            secret_key=settings.secret_key,
            shared_password=settings.nats_shared_island_password,
            coordinator_password=coordinator_password(settings.nats_url),
        )
        self.granted = 0
        self.refused = 0
        self._sub: Any = None

    async def decide(self, request_jwt: str) -> bytes:
        """The signed response to one authorization request."""
        claims = nkey_jwt.decode(request_jwt)
        if not str(claims.get("iss", "")).startswith("N"):
            raise nkey_jwt.JwtError("authorization request not signed by a server key")
        nats = claims.get("nats") or {}
        user_nkey = str(nats.get("user_nkey") or "")
        server_id = str((nats.get("server_id") or {}).get("id") or "")
        opts = nats.get("connect_opts") or {}
        client = nats.get("client_info") or {}
        user, password = str(opts.get("user") or ""), str(opts.get("pass") or "")
        async with self.runtime.db.transaction() as session:
            grant = await nats_access.authorize(session, self.config, user, password)
        response: dict[str, Any] = {"type": "authorization_response", "version": 2}
        if grant is None:
            self.refused += 1
            log.warning("nats.auth_refused", user=user[:64], client_host=client.get("host"))
            response["error"] = "not authorized"
        else:
            self.granted += 1
            response["jwt"] = nkey_jwt.encode(self.seed, user_claims(grant, user_nkey))
        return nkey_jwt.encode(self.seed, {"sub": user_nkey, "aud": server_id, "nats": response}).encode()

    async def on_request(self, msg: Any) -> None:
        if not msg.reply:
            return
        try:
            answer = await self.decide(msg.data.decode())
        except Exception:  # a request we cannot read: no answer, the server times out and refuses
            log.exception("nats.auth_callout_failed")
            return
        await self.runtime.nats.publish(msg.reply, answer)

    async def start(self, nc: Any) -> None:
        self._sub = await nc.subscribe(AUTH_SUBJECT, queue=QUEUE, cb=self.on_request)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None


class AuthCalloutChild(Child):
    """Serves the callout on the process's NATS connection (the coordinator's user is a static
    `auth_users` entry of the server, so it never goes through the callout itself)."""

    name = "nats-auth-callout"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.callout = AuthCallout(runtime)

    async def run(self, ready: Callable[[], None]) -> None:
        await self.callout.start(self.runtime.nats)
        ready()
        try:
            await asyncio.Event().wait()
        finally:
            await self.callout.stop()


async def kick_host_connections(nats_url: str, host_id: str, wait: float = 1.0) -> int:
    """Disconnect the live connections of one Island's credential, through the server's system account
    (`$SYS.REQ.SERVER.PING.CONNZ` to find them on every server, `$SYS.REQ.SERVER.<id>.KICK` each). Needs
    the coordinator's password in `nats_url`; returns how many were kicked."""
    import json

    import nats

    password = coordinator_password(nats_url)
    if not password:
        return 0
    host_port = nats_url.partition("://")[2].rpartition("@")[2]
    scheme = nats_url.partition("://")[0] or "nats"
    nc = await nats.connect(
        f"{scheme}://{host_port}",
        user=nats_access.SYSTEM_USER,
        password=password,
        name="coordinator-system",
        allow_reconnect=False,
        connect_timeout=int(wait * 2) or 1,
    )
    kicked = 0
    try:
        inbox = nc.new_inbox()
        replies: asyncio.Queue[Any] = asyncio.Queue()
        sub = await nc.subscribe(inbox, cb=replies.put)
        query = {"user": host_id, "limit": 1024}
        await nc.publish("$SYS.REQ.SERVER.PING.CONNZ", json.dumps(query).encode(), reply=inbox)
        deadline = asyncio.get_running_loop().time() + wait
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                msg = await asyncio.wait_for(replies.get(), left)
            except TimeoutError:
                break
            answer = json.loads(msg.data)
            server = (answer.get("server") or {}).get("id")
            for conn in (answer.get("data") or {}).get("connections") or []:
                body = json.dumps({"cid": conn["cid"]}).encode()
                with contextlib.suppress(Exception):
                    await nc.request(f"$SYS.REQ.SERVER.{server}.KICK", body, timeout=wait)
                    kicked += 1
        await sub.unsubscribe()
    finally:
        await nc.close()
    return kicked
