"""HTTP endpoints the Island calls without authentication: update check, preload hints, cosign keys, and
the seeded WASM Cargo. Each answers fast: the Island awaits them inline in its main loop (§5, §11.14)."""

from __future__ import annotations

import asyncio
from functools import lru_cache
from pathlib import Path
from typing import Any

import structlog
from fastapi import Request
from fastapi.responses import Response

from coordinator.hosts.recommendations import queued_demand
from coordinator.hosts.service import parse_host_id
from coordinator.marketplace import publishers
from coordinator.web import schemas
from coordinator.web.api.v1.marketplace_schemas import SigningKey
from coordinator.web.auth import get_runtime
from coordinator.web.errors import error_responses
from coordinator.web.routing import ApiRouter

log = structlog.get_logger(__name__)
router = ApiRouter(tags=["island"])

RECOMMENDATIONS_BUDGET_SECONDS = 2.0
STATIC = Path(__file__).resolve().parents[2] / "static"


def _newer(latest: str, current: str) -> bool:
    def key(version: str) -> tuple[int, ...]:
        parts = []
        for part in version.lstrip("v").split("."):
            digits = "".join(c for c in part if c.isdigit())
            parts.append(int(digits) if digits else 0)
        return tuple(parts)

    return key(latest) > key(current)


@router.get("/api/v1/agent/update", response_model=schemas.AgentUpdate, responses=error_responses(422))
async def agent_update(request: Request, version: str = "0.0.0") -> dict[str, Any]:
    release = get_runtime(request).settings.agent_release
    latest = str(release.get("latest_version", "")) if release else ""
    if not release or not latest or not release.get("download_url") or not _newer(latest, version):
        return {"update_available": False, "current_version": version}
    answer: dict[str, Any] = {"update_available": True, "current_version": version, "latest_version": latest}
    for key in ("is_critical", "download_url", "signature", "checksum_sha256", "size_bytes", "release_notes"):
        if release.get(key) is not None:
            answer[key] = release[key]
    return answer


@router.get("/api/v1/island/recommendations", response_model=schemas.Recommendations)
async def island_recommendations(request: Request, host_id: str | None = None) -> dict[str, Any]:
    runtime = get_runtime(request)
    parsed = parse_host_id(host_id) if host_id else None
    view = runtime.fleet.get(parsed) if parsed is not None else None

    async def compute() -> list[dict[str, Any]]:
        async with runtime.db.session() as session:
            recs = await queued_demand(session, view.supported_runtimes if view else None)
        return [r.to_dict() for r in recs]

    try:
        items = await asyncio.wait_for(compute(), RECOMMENDATIONS_BUDGET_SECONDS)
    except Exception:
        # A slow or failing database must not freeze the Island's main loop: no hints this time.
        log.warning("island.recommendations_unavailable", host_id=host_id)
        items = []
    return {"recommendations": items}


@router.get("/api/v1/signing-keys", response_model=list[SigningKey], response_model_exclude_none=True)
async def signing_keys(request: Request) -> list[dict[str, Any]]:
    """The cosign keys Islands trust: the operator's configured keys, then every verified publisher's."""
    runtime = get_runtime(request)
    async with runtime.db.session() as session:
        keys = await publishers.verified_publisher_keys(session)
    return [*runtime.settings.signing_keys, *keys]


@lru_cache(maxsize=1)
def text_stats_wasm() -> bytes:
    """The text-stats Cargo, compiled from its WAT source on first use."""
    import wasmtime

    return bytes(wasmtime.wat2wasm((STATIC / "text-stats.wat").read_text()))


@router.get(
    "/cargos/text-stats.wasm",
    response_class=Response,
    responses={200: {"content": {"application/wasm": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def text_stats_module() -> Response:
    wasm = await asyncio.to_thread(text_stats_wasm)
    return Response(wasm, media_type="application/wasm", headers={"Cache-Control": "public, max-age=3600"})
