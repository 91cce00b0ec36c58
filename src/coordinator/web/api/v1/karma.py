"""`GET /api/v1/hosts/{id}/karma[/history]`: an Island's reputation and the events that made it."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Query, Request

from coordinator.accounts.service import Principal, parse_uuid
from coordinator.karma import service as karma
from coordinator.web import schemas
from coordinator.web.auth import get_runtime, require_read
from coordinator.web.errors import error_responses
from coordinator.web.routing import ApiRouter

router = ApiRouter(tags=["karma"])


@router.get(
    "/api/v1/hosts/{host_id}/karma",
    response_model=schemas.KarmaResponse,
    responses=error_responses(401, 403, 404, 429),
)
async def get_karma(host_id: str, request: Request, _: Principal = Depends(require_read)) -> dict[str, Any]:
    runtime = get_runtime(request)
    async with runtime.db.session() as session:
        data = await karma.karma_summary(
            session, parse_uuid(host_id, "Island"), defaults=karma.policy_from_settings(runtime.settings)
        )
    return {"data": data}


@router.get(
    "/api/v1/hosts/{host_id}/karma/history",
    response_model=schemas.KarmaHistory,
    responses=error_responses(401, 403, 404, 422, 429),
)
async def get_karma_history(
    host_id: str,
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    principal: Principal = Depends(require_read),
) -> dict[str, Any]:
    viewer = None if principal.is_admin else principal.user.id
    async with get_runtime(request).db.session() as session:
        events = await karma.karma_history(session, parse_uuid(host_id, "Island"), limit, viewer_id=viewer)
    return {"data": events}
