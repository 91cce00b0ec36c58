"""`GET /api/v1/account`: the caller's account."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from coordinator.accounts.service import Principal
from coordinator.web import presenters
from coordinator.web.auth import require_read

router = APIRouter(tags=["account"])


@router.get("/api/v1/account")
async def get_account(principal: Principal = Depends(require_read)) -> dict[str, Any]:
    return {"data": presenters.account(principal.user)}
