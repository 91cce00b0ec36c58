"""Domain errors: raised by contexts, rendered by transports (HTTP maps each to its status code)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any


class DomainError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details


class NotFound(DomainError):
    status_code = 404
    code = "not_found"


class Unauthorized(DomainError):
    status_code = 401
    code = "unauthorized"


class Forbidden(DomainError):
    status_code = 403
    code = "forbidden"


class Conflict(DomainError):
    status_code = 409
    code = "conflict"


class Gone(DomainError):
    status_code = 410
    code = "gone"


class ValidationFailed(DomainError):
    status_code = 422
    code = "validation_failed"

    def __init__(self, message: str = "Invalid input", errors: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.errors = errors or {}


class InsufficientCredits(DomainError):
    """402; the body says how much the request needs and how much the account has."""

    status_code = 402
    code = "insufficient_credits"

    def __init__(self, message: str, *, required: Decimal, available: Decimal):
        super().__init__(message, details={"required": float(required), "available": float(available)})
        self.required = required
        self.available = available


class RateLimited(DomainError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = headers or {}
