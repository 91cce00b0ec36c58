"""`/host`: a browser Island. The page asks for a device of the signed-in account (a new Island, paired
to it at once, and its device token), joins `island:<id>` over the Phoenix socket with that token, and
runs jobs in the tab (`static/host.js`): WASM Cargos with the browser's WebAssembly in a worker, chat
jobs with a small in-browser text generator. The page reads its Island's status, karma and earnings from
`/host/stats`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse

from coordinator.accounts.service import Principal
from coordinator.errors import NotFound
from coordinator.hosts import devices, owners, pairing
from coordinator.hosts import service as hosts
from coordinator.web.fleet_events import fleet_changed
from coordinator.web.pages.base import PageRoute, check_csrf, render, runtime_of, signed_in

router = APIRouter(route_class=PageRoute, include_in_schema=False)
BROWSER_PLATFORM = "browser"


@router.get("/host")
async def host_page(request: Request, principal: Principal = Depends(signed_in)) -> HTMLResponse:
    async with runtime_of(request).db.read() as session:
        mine = await owners.list_owned_hosts(session, principal.user.id)
    browsers = [h for h in mine if h.platform == BROWSER_PLATFORM]
    return render(request, "host.html", {"browsers": browsers, "user_id": principal.user.id})


@router.post("/host/device", dependencies=[Depends(check_csrf)])
async def new_browser_island(request: Request, principal: Principal = Depends(signed_in)) -> JSONResponse:
    """A new browser Island of the signed-in account: the device pairing flow of channels §4 done in one
    transaction (the owner is the one asking, so the code is claimed at once), answering the device
    token the tab keeps in its storage."""
    runtime = runtime_of(request)
    settings = runtime.settings
    async with runtime.db.transaction() as session:
        started = await devices.start_pairing(
            session,
            approval_required=settings.approval_required,
            ttl_seconds=settings.pairing_code_ttl_seconds,
            platform=BROWSER_PLATFORM,
            name="Browser Island",
            secret_key=settings.secret_key,
        )
        # The claim is a plain UPDATE: re-read the pairing rows afterwards, not the objects just added.
        session.expire_all()
        host = await pairing.claim_pairing_code(session, started.code, principal.user.id)
        issued = await devices.exchange_poll_token(session, settings.secret_key, started.poll_token)
    hosts.sync_view(runtime.fleet, host)
    await fleet_changed(runtime)
    body = {"host_id": str(issued.host_id), "device_token": issued.device_token}
    return JSONResponse(body, status_code=201, headers={"Cache-Control": "no-store"})


@router.get("/host/stats")
async def host_stats(
    request: Request, host_id: str = Query(max_length=64), principal: Principal = Depends(signed_in)
) -> JSONResponse:
    """The Island's status, karma and earnings, for its owner only (anyone else: not found)."""
    parsed = hosts.parse_host_id(host_id)
    async with runtime_of(request).db.read() as session:
        host = await hosts.get_host(session, str(parsed)) if parsed is not None else None
    if host is None or host.owner_id != principal.user.id:
        raise NotFound("Island not found")
    body: dict[str, Any] = {
        "host_id": str(host.id),
        "status": host.status,
        "approved": host.approved,
        "karma": host.karma,
        "earnings": f"{host.earnings_total:.4f}",
    }
    return JSONResponse(body, headers={"Cache-Control": "no-store"})
