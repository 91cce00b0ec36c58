"""`GET /api/v1/account`: the caller's account."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request

from coordinator.accounts.models import User
from coordinator.accounts.service import Principal
from coordinator.errors import Unauthorized
from coordinator.web import presenters, schemas
from coordinator.web.auth import get_runtime, require_read
from coordinator.web.errors import error_responses
from coordinator.web.routing import ApiRouter

router = ApiRouter(tags=["account"])


@router.get(
    "/api/v1/account", response_model=schemas.AccountResponse, responses=error_responses(401, 403, 429)
)
async def get_account(request: Request, principal: Principal = Depends(require_read)) -> dict[str, Any]:
    # Read now: the principal's row may be up to a second old (`accounts/principals.py`), the balance not.
    async with get_runtime(request).db.read() as session:
        user = await session.get(User, principal.user.id)
    if user is None:
        raise Unauthorized("Invalid or missing API key")
    return {"data": presenters.account(user)}
