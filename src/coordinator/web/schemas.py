"""Response models of the client API (client-api §3): what the OpenAPI document promises clients.

The fields the official clients read are declared with their types (required where a client requires
them); every model allows extra fields, because the clients ignore them and the presenters add some
(`placement`, `queue_position`, owner-only Island details). Timestamps are ISO-8601 strings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def Timestamp() -> Any:
    return Field(json_schema_extra={"format": "date-time"})


def OptionalTimestamp() -> Any:
    return Field(None, json_schema_extra={"format": "date-time"})


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# ------------------------------------------------------------------ accounts


class Account(Open):
    # A string: the Python SDK (and the TypeScript types) require one; the CLI's i64 cannot be served
    # at the same time (docs/decisions/0002-api-choices.md).
    id: str
    email: str
    credits: float
    created_at: str = Timestamp()


class AccountResponse(Open):
    data: Account


class ApiKey(Open):
    id: str
    name: str
    prefix: str
    created_at: str = Timestamp()
    last_used_at: str | None = OptionalTimestamp()
    expires_at: str | None = OptionalTimestamp()


class ApiKeyList(Open):
    data: list[ApiKey]


class ApiKeyCreatedData(ApiKey):
    """The record, again under `api_key` (CLI) and `data` (TypeScript SDK), and the secret `key`."""

    api_key: ApiKey
    data: ApiKey
    key: str


class ApiKeyCreated(Open):
    data: ApiKeyCreatedData
    key: str


class Deleted(Open):
    id: str
    deleted: bool


class DeletedResponse(Open):
    data: Deleted


class MagicLinkSent(Open):
    data: dict[str, bool]


class SessionCreated(Open):
    data: dict[str, str]


# ------------------------------------------------------------------ jobs

JobStatus = Literal["pending", "queued", "running", "completed", "failed", "cancelled", "timeout"]


class Usage(Open):
    """Token counts come from the Island (`tokens_source: island`) or, when it reports none, are counted
    by the coordinator: one completion token per streamed token chunk, prompt tokens estimated at one per
    four characters of prompt and system prompt (`tokens_source: counted`)."""

    prompt_tokens: int | None = Field(None, ge=0)
    completion_tokens: int | None = Field(None, ge=0)
    total_tokens: int | None = Field(None, ge=0)
    credits_used: float = 0.0
    tokens_source: Literal["island", "counted"] | None = None


class Placement(Open):
    """Where the job ran and why (`host_id`, `score`, `terms`, prices), or, while it waits, why no Island
    took it: `reason` (runtime, region, price, capacity), `message`, `lowest_ask` and `since`."""

    host_id: str | None = None
    reason: Literal["runtime", "region", "price", "capacity"] | None = None
    message: str | None = None
    lowest_ask: float | None = None


class Job(Open):
    id: str
    workload_id: int
    workload_slug: str | None = None
    status: JobStatus
    input: dict[str, Any]
    output: str | None = None
    error: str | None = None
    created_at: str = Timestamp()
    started_at: str | None = OptionalTimestamp()
    completed_at: str | None = OptionalTimestamp()
    duration_ms: int | None = Field(None, ge=0)
    usage: Usage | None = None
    placement: Placement | None = None
    queue_position: int | None = None


class JobResponse(Open):
    data: Job


class JobListMeta(Open):
    total: int
    limit: int
    offset: int


class JobList(Open):
    data: list[Job]
    meta: JobListMeta


class JobOutput(Open):
    id: str
    status: JobStatus
    output: str | None = None
    error: str | None = None


class JobOutputResponse(Open):
    data: JobOutput


class BatchChild(Open):
    id: str
    batch_index: int
    state: str
    error: str | None = None
    host_id: str | None = None


class BatchConfig(Open):
    chunk_count: int
    merge_strategy: str = "concat"
    fail_mode: str = "best_effort"
    completed: int = 0
    failed: int = 0


class BatchJob(Open):
    """Top level, not in an envelope (both SDKs read it so); the same object is also under `data`."""

    id: str
    state: str
    workload: str
    batch: BatchConfig
    children: list[BatchChild] = []
    created_at: str = Timestamp()


class BatchProgress(Open):
    parent_id: str
    parent_state: str
    chunk_count: int
    merge_strategy: str
    fail_mode: str
    child_states: dict[str, int] = {}
    children: list[BatchChild] = []


# ------------------------------------------------------------------ chat (OpenAI shape)


class ChatMessageOut(Open):
    role: str
    content: str


class ChatChoice(Open):
    index: int = 0
    message: ChatMessageOut
    finish_reason: str | None = None


class ChatUsage(Open):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatCompletion(Open):
    """`stream: false`. With `stream: true` the answer is `text/event-stream` chunks ending `[DONE]`."""

    choices: list[ChatChoice]
    usage: ChatUsage | None = None


# ------------------------------------------------------------------ catalog, Islands, market


class Workload(Open):
    id: int
    name: str
    slug: str
    description: str | None = None
    runtime_type: Literal["container", "wasm"]
    required_vram_mb: int | None = Field(None, ge=0)
    required_ram_mb: int | None = Field(None, ge=0)
    price_per_job: float
    is_enabled: bool = True


class WorkloadResponse(Open):
    data: Workload


class WorkloadList(Open):
    data: list[Workload]


class Host(Open):
    id: str
    name: str | None = None
    status: str | None = None
    region: str | None = None
    capabilities: dict[str, Any] | None = None
    karma_score: float | None = None
    last_heartbeat_at: str | None = OptionalTimestamp()


class HostResponse(Open):
    data: Host


class HostList(Open):
    data: list[Host]


class Karma(Open):
    host_id: str
    karma: int


class KarmaResponse(Open):
    data: Karma


class KarmaHistory(Open):
    data: list[dict[str, Any]]


class MarketRate(Open):
    workload_slug: str
    avg_price: float | None = None
    min_price: float | None = None
    max_price: float | None = None
    num_hosts: int | None = Field(None, ge=0)
    timestamp: str | None = OptionalTimestamp()


class MarketRates(Open):
    """Always a list, even for one Cargo (the CLI reads a list)."""

    data: list[MarketRate]


class Bid(Open):
    workload: str
    bid: float
    updated_at: str = Timestamp()


class BidResponse(Open):
    data: Bid


class BidList(Open):
    data: list[Bid]


class AskingPrices(Open):
    host_id: str
    asking_prices: dict[str, str]


class AskingPricesResponse(Open):
    data: AskingPrices


# ------------------------------------------------------------------ service


class Health(Open):
    data: dict[str, str]


class AgentUpdate(Open):
    update_available: bool
    current_version: str
    latest_version: str | None = None


class Recommendations(Open):
    recommendations: list[dict[str, Any]]
