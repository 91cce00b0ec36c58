"""Settings: every tunable of the coordinator, read from the environment (prefix ``COORDINATOR_``)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET = "dev-secret-change-me"


def normalize_database_url(url: str) -> str:
    """Return a SQLAlchemy URL that uses the psycopg 3 async-capable driver."""
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://", "postgresql+asyncpg://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def libpq_url(url: str) -> str:
    """The same URL in the form libpq (psycopg, procrastinate) accepts."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


class Settings(BaseSettings):
    """The coordinator's configuration. Field names map to ``COORDINATOR_<NAME>`` variables."""

    model_config = SettingsConfigDict(
        env_prefix="COORDINATOR_", env_file=None, extra="ignore", populate_by_name=True
    )

    env: Literal["development", "test", "production"] = "production"
    secret_key: str = DEFAULT_SECRET

    database_url: str = Field(
        "postgresql+psycopg://postgres@localhost/coordinator",
        validation_alias=AliasChoices("DATABASE_URL", "COORDINATOR_DATABASE_URL"),
    )
    db_pool_size: int = 20
    db_max_overflow: int = 10

    nats_url: str | None = Field(None, validation_alias=AliasChoices("NATS_URL", "COORDINATOR_NATS_URL"))
    # Copies of each JetStream stream (JOBS, JOB_STATUS, JOB_OUTPUT): 3 on a three-node NATS cluster.
    nats_stream_replicas: int = 1
    nats_disabled: bool = Field(
        False, validation_alias=AliasChoices("NATS_DISABLED", "COORDINATOR_NATS_DISABLED")
    )

    # Broker-enforced Island identity (docs/decisions/nats-auth.md): the account nkey seed (`SA…`) whose
    # public key is the nats-server `auth_callout { issuer }`; set = this process answers the callout.
    nats_auth_issuer_seed: str | None = None
    # Compatibility mode (off unless set): the original's one shared password for user `island`.
    nats_shared_island_password: str | None = None
    # The URL Islands are given (credentials are added to it); default: nats_url without its userinfo.
    nats_public_url: str | None = None

    host: str = "127.0.0.1"
    port: int = 4000
    public_url: str | None = None
    cors_origins: list[str] = ["*"]
    log_level: str = "INFO"
    log_format: Literal["json", "console", "auto"] = "auto"

    # Request bodies over this size are refused with 413 before anything runs (well under NATS's 8 MiB
    # payload limit, which an assignment carrying the input must fit in).
    max_request_bytes: int = 4 * 1024 * 1024
    # How long an idle keep-alive connection stays open. Longer than the clients' and proxies' own idle
    # limits (httpx 5 s, nginx and cloud load balancers 60 s): a server that closes first races the client's
    # next request on that connection, which then fails with a reset (a submit the client will not retry).
    http_keep_alive_seconds: int = 75

    # accounts
    magic_link_ttl_seconds: int = 15 * 60
    # Limits that need no API key (429 with Retry-After): magic links per e-mail address and per client
    # address per hour, sign-ins (spending a link) and failed credentials per client address per minute.
    magic_link_per_email_per_hour: int = 5
    magic_link_per_address_per_hour: int = 60
    sign_in_per_address_per_minute: int = 30
    bad_credentials_per_address_per_minute: int = 30
    session_ttl_days: int = 30
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_from: str = "coordinator@localhost"
    signup_credits: float = 10_000.0

    # islands
    require_host_approval: bool | None = None
    heartbeat_timeout_seconds: int = 30
    pairing_code_ttl_seconds: int = 600
    heartbeat_flush_seconds: float = 2.0
    # The release offered by GET /api/v1/agent/update (JSON: latest_version, download_url, signature,
    # checksum_sha256, size_bytes?, is_critical?, release_notes?); None answers "no update".
    agent_release: dict[str, Any] | None = None
    # Cosign keys served at GET /api/v1/signing-keys (JSON array of {key_id, public_key, algorithm, issuer}).
    signing_keys: list[dict[str, Any]] = []

    # jobs
    rate_limit_per_minute: int = 100
    job_lease_seconds: int = 60
    job_start_timeout_seconds: int = 300
    job_max_attempts: int = 3
    # A queued job that no Island could take (price, runtime, region or capacity, see `placement.reason`)
    # for this long fails with a full refund and that reason; 0 waits for ever.
    job_unplaceable_timeout_seconds: float = 300.0
    dispatch_batch_size: int = 100
    # A submit that finds nothing queued and an idle Island with a slot assigns the job in its own
    # transaction (`Dispatcher.plan_at_submit`); off, every job waits for a dispatcher pass.
    assign_at_submit: bool = True
    dispatch_interval_seconds: float = 5.0
    lease_sweep_interval_seconds: float = 2.0
    poll_rate_limit_per_minute: int = 600
    # How often a replica adds its in-memory request counts to the shared PostgreSQL counter.
    rate_limit_sync_seconds: float = 1.0
    # How long an authenticated API key is remembered (`accounts/principals.py`): at most 1 s, 0 = off.
    api_key_cache_seconds: float = Field(1.0, ge=0, le=1)

    # karma (metro_settings rows override the first three per region)
    karma_minutes_per_karma: int = 60
    karma_recovery_multiplier: float = 1.5
    karma_monetization_threshold: int = 10

    # billing, quotas and the exchange
    platform_fee: float = 0.0
    active_jobs_unverified: int = 20
    active_jobs_verified: int = 200
    daily_spend_unverified: float = 1_000.0
    market_rate_markup: float = 1.05
    market_rate_window_minutes: int = 60
    surge_multiplier: float = 1.25
    surge_demand_ratio: float = 2.0
    surge_cache_seconds: float = 30.0
    payout_provider: Literal["virtual", "stripe"] = "virtual"
    payout_minimum: float = 0.0
    stripe_api_key: str | None = None
    stripe_api_base: str | None = None

    # verification (KYC, docs/verification.md)
    verification_provider: Literal["builtin", "stripe"] = "builtin"
    stripe_identity_webhook_secret: str | None = None  # whsec_… of the Identity webhook endpoint
    stripe_identity_webhook_tolerance_seconds: int = 300  # older signed timestamps are refused (replays)
    stripe_identity_return_url: str | None = None  # default: <public_url>/verify

    # the Cargo registry (docs/registry.md)
    registry_scanners: list[str] = ["trivy", "grype", "builtin"]
    registry_advisory_dir: str | None = None  # OSV JSON files for the built-in scanner
    registry_max_image_bytes: int = 2 * 1024**3
    registry_scan_timeout_seconds: float = 600.0  # per image: fetch + every scanner
    registry_scan_concurrency: int = 2  # images scanned at once per worker process
    registry_insecure_hosts: list[str] = ["localhost", "127.0.0.1"]  # registries reached over plain HTTP
    registry_work_dir: str | None = None  # where fetched images are unpacked (a temp dir by default)
    registry_rescan_days: int = 7
    registry_success_window_days: int = 7  # success rate of the hourly reputation worker

    # streaming (output accumulator, pub/sub, SSE)
    output_flush_interval_seconds: float = 0.05
    # How long a success whose output has a gap (or no final chunk) waits for the missing chunks (redelivered
    # from JOB_OUTPUT after a replica died) before it fails with a refund instead.
    output_gap_grace_seconds: float = 8.0
    sse_keepalive_seconds: float = 15.0
    # A Phoenix socket (`/socket/websocket`) silent this long (no frame, no heartbeat) is closed.
    channel_idle_timeout_seconds: float = 60.0
    # uvicorn's WebSocket implementation: `websockets-sansio` (no tasks per idle socket), `websockets`.
    websocket_implementation: str = "websockets-sansio"
    # permessage-deflate costs each socket its zlib state (tens of KB); channel frames are small JSON.
    websocket_per_message_deflate: bool = False
    pubsub_queue_size: int = 2048
    chat_completion_timeout_seconds: float = 300.0

    # metrics and logs (docs/metrics.md)
    metrics_token: str | None = None
    metrics_collectors: bool = True  # poll PostgreSQL for the fleet/jobs/billing gauges in this process
    metrics_port: int | None = None  # /metrics on its own port in processes without HTTP (`worker`)
    metrics_fleet_interval_seconds: float = 15.0
    metrics_jobs_interval_seconds: float = 10.0
    metrics_billing_interval_seconds: float = 30.0
    db_slow_query_ms: float = 500.0

    @field_validator("database_url")
    @classmethod
    def _normalize_db(cls, value: str) -> str:
        return normalize_database_url(value)

    @model_validator(mode="after")
    def _refuse_default_secret(self) -> Settings:
        if self.env == "production" and self.secret_key == DEFAULT_SECRET:
            raise ValueError(
                "COORDINATOR_SECRET_KEY must be set outside development "
                "(set COORDINATOR_ENV=development for a local stack)"
            )
        return self

    @model_validator(mode="after")
    def _stripe_identity_needs_keys(self) -> Settings:
        if self.verification_provider == "stripe" and not (
            self.stripe_api_key and self.stripe_identity_webhook_secret
        ):
            raise ValueError(
                "COORDINATOR_VERIFICATION_PROVIDER=stripe needs COORDINATOR_STRIPE_API_KEY and "
                "COORDINATOR_STRIPE_IDENTITY_WEBHOOK_SECRET"
            )
        return self

    @property
    def is_dev(self) -> bool:
        return self.env != "production"

    @property
    def nats_auth_enabled(self) -> bool:
        return self.nats_enabled and bool(self.nats_auth_issuer_seed)

    @property
    def island_nats_url(self) -> str:
        """Where Islands connect, without userinfo."""
        url = self.nats_public_url or self.nats_url or "nats://127.0.0.1:4222"
        scheme, sep, rest = url.partition("://")
        return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url

    @property
    def nats_enabled(self) -> bool:
        return bool(self.nats_url) and not self.nats_disabled

    @property
    def approval_required(self) -> bool:
        if self.require_host_approval is not None:
            return self.require_host_approval
        return self.env == "production"

    @property
    def libpq_database_url(self) -> str:
        return libpq_url(self.database_url)


@lru_cache
def get_settings() -> Settings:
    return Settings()
