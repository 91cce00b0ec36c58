"""Every error leaves as `{"error": {"code", "message"}}` (+ `errors` on 422), never as `{"detail"}`."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg import DataError
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from coordinator.errors import DomainError, RateLimited, ValidationFailed

log = structlog.get_logger(__name__)

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorEnvelope(BaseModel):
    """The body of every error answer; `errors` (field → messages) only on 422."""

    error: ErrorDetail
    errors: dict[str, list[str]] | None = None


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for a route: each listed status answers with the error envelope."""
    return {
        code: {"model": ErrorEnvelope, "description": STATUS_CODES.get(code, "error").replace("_", " ")}
        for code in codes
    }


def error_body(code: str, message: str, errors: dict[str, list[str]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if errors is not None:
        body["errors"] = errors
    return body


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def validation_errors(exc: RequestValidationError) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            errors.setdefault("body", []).append("is not valid JSON")
            continue
        errors.setdefault(_field_path(tuple(err.get("loc", ()))), []).append(
            str(err.get("msg", "is invalid"))
        )
    return errors


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def domain_error(_: Request, exc: DomainError) -> JSONResponse:
        errors = exc.errors if isinstance(exc, ValidationFailed) else None
        headers = None
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(int(exc.retry_after)), **exc.headers}
        return JSONResponse(error_body(exc.code, exc.message, errors), exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("validation_failed", "Invalid input", validation_errors(exc)), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = "Not found"
        return JSONResponse(error_body(code, message), exc.status_code, headers=exc.headers)

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        # Values PostgreSQL cannot store (NUL characters, out-of-range numbers) are the client's input.
        if isinstance(exc.orig, DataError):
            return JSONResponse(
                error_body(
                    "validation_failed", "Invalid input", {"request": ["contains an unstorable value"]}
                ),
                422,
            )
        log.exception("http.database_error", path=request.url.path)
        return JSONResponse(error_body("internal_error", "Internal server error"), 500)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("http.unhandled_error", path=request.url.path)
        return JSONResponse(error_body("internal_error", "Internal server error"), 500)
