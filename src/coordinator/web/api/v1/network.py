"""Public reads of the original API: `GET /api/v1/network/stats` and OpenAI-style `GET /api/v1/models`."""

from __future__ import annotations

from typing import Literal

from fastapi import Depends, Request
from pydantic import BaseModel

from coordinator.accounts.service import Principal
from coordinator.hosts.network import NetworkStats, network_stats
from coordinator.web.auth import get_runtime, require_read
from coordinator.web.errors import error_responses
from coordinator.web.routing import ApiRouter
from coordinator.workloads import service as workloads

router = ApiRouter(tags=["network"])


class NetworkStatsBody(BaseModel):
    online_islands: int
    regions: int
    jobs_completed: int


class NetworkStatsResponse(BaseModel):
    data: NetworkStatsBody


class Model(BaseModel):
    """One chat Cargo as an OpenAI model: `id` is what `/chat/completions` accepts as `model`."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "archipelag"
    name: str
    default: bool


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


@router.get("/api/v1/network/stats", response_model=NetworkStatsResponse, responses=error_responses(429))
async def get_network_stats(request: Request) -> NetworkStatsResponse:
    """Islands online now, their regions and jobs completed; public, cached for a few seconds."""
    runtime = get_runtime(request)
    cache = runtime.network_stats

    async def compute() -> NetworkStats:
        async with runtime.db.read() as session:
            return await network_stats(session, runtime.settings.heartbeat_timeout_seconds)

    stats = await cache.get(compute)
    return NetworkStatsResponse(data=NetworkStatsBody(**stats.__dict__))


@router.get("/api/v1/models", response_model=ModelList, responses=error_responses(401, 403, 429))
async def list_models(request: Request, _: Principal = Depends(require_read)) -> ModelList:
    """The chat Cargos, OpenAI style; `default` marks the one `model: "default"` runs."""
    async with get_runtime(request).db.read() as session:
        chats = [w for w in await workloads.list_workloads(session) if w.kind == "chat"]
        default = await workloads.default_chat_workload(session) if chats else None
    # Every field given explicitly: answers are serialised with exclude_unset (`web.routing`).
    return ModelList(
        object="list",
        data=[
            Model(
                id=w.slug,
                object="model",
                owned_by="archipelag",
                created=int(w.created_at.timestamp()),
                name=w.name,
                default=default is not None and w.id == default.id,
            )
            for w in chats
        ],
    )
