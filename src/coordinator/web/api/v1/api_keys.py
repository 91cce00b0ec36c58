"""`/api/v1/api-keys`: list, create (the secret is shown once) and revoke the caller's keys."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request
from pydantic import BaseModel, Field

from coordinator.accounts import service as accounts
from coordinator.accounts.service import Principal
from coordinator.web import presenters, schemas
from coordinator.web.auth import get_runtime, require_read, require_write
from coordinator.web.errors import error_responses
from coordinator.web.routing import ApiRouter

router = ApiRouter(tags=["api-keys"])


class CreateApiKey(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    scopes: list[str] | None = None


@router.get("/api/v1/api-keys", response_model=schemas.ApiKeyList, responses=error_responses(401, 403, 429))
async def list_keys(request: Request, principal: Principal = Depends(require_read)) -> dict[str, Any]:
    async with get_runtime(request).db.session() as session:
        keys = await accounts.list_api_keys(session, principal.user.id)
    return {"data": [presenters.api_key(k) for k in keys]}


@router.post(
    "/api/v1/api-keys",
    status_code=201,
    response_model=schemas.ApiKeyCreated,
    responses=error_responses(401, 403, 422, 429),
)
async def create_key(
    body: CreateApiKey, request: Request, principal: Principal = Depends(require_write)
) -> dict[str, Any]:
    runtime = get_runtime(request)
    async with runtime.db.transaction() as session:
        key, secret = await accounts.create_api_key(
            session, runtime.settings.secret_key, principal.user, body.name, body.scopes
        )
    record = presenters.api_key(key)
    # One body for three clients (client-api §4.12): py reads data+key, the CLI data.api_key+data.key,
    # the TypeScript SDK data.data+data.key.
    return {"data": {**record, "api_key": record, "data": record, "key": secret}, "key": secret}


@router.delete(
    "/api/v1/api-keys/{key_id}",
    response_model=schemas.DeletedResponse,
    responses=error_responses(401, 403, 404, 429),
)
async def revoke_key(
    key_id: str, request: Request, principal: Principal = Depends(require_write)
) -> dict[str, Any]:
    async with get_runtime(request).db.transaction() as session:
        key = await accounts.revoke_api_key(session, principal.user.id, key_id)
    return {"data": {"id": str(key.id), "deleted": True}}
