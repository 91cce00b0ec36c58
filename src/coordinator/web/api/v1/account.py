"""`GET /api/v1/account`: the caller's account."""

from __future__ import annotations

from typing import Any

from fastapi import Depends

from coordinator.accounts.service import Principal
from coordinator.web import presenters, schemas
from coordinator.web.auth import require_read
from coordinator.web.errors import error_responses
from coordinator.web.routing import ApiRouter

router = ApiRouter(tags=["account"])


@router.get(
    "/api/v1/account", response_model=schemas.AccountResponse, responses=error_responses(401, 403, 429)
)
async def get_account(principal: Principal = Depends(require_read)) -> dict[str, Any]:
    return {"data": presenters.account(principal.user)}
