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

from coordinator.errors import DomainError, InsufficientCredits, RateLimited, ValidationFailed

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
    # 402 only: the credits the request needs and the account's balance.
    required: float | None = None
    available: float | None = None


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


def error_body(
    code: str,
    message: str,
    errors: dict[str, list[str]] | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"error": {"code": code, "message": message, **(details or {})}}
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
        details = exc.details if isinstance(exc, InsufficientCredits) else None
        return JSONResponse(
            error_body(exc.code, exc.message, errors, details), exc.status_code, headers=headers
        )

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


def _envelope_answer(code: int, envelope: dict[str, str]) -> dict[str, Any]:
    description = STATUS_CODES.get(code, "error").replace("_", " ")
    return {"description": description, "content": {"application/json": {"schema": envelope}}}


def install_envelope_openapi(app: FastAPI) -> None:
    """The OpenAPI document tells the truth about 422: FastAPI documents `HTTPValidationError`
    (`{"detail": …}`) for every route with parameters, but the handler above answers every invalid
    request with the envelope. Every 422 in the document (declared or added) is the envelope. Every
    operation that takes a body also documents the answers every body can get before the route runs:
    400 (bytes that cannot be parsed, e.g. invalid UTF-8) and 413 (over the size limit, web/bodylimit)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        if "ErrorEnvelope" in components:  # present as soon as one route declares an error
            envelope = {"$ref": "#/components/schemas/ErrorEnvelope"}
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    if "requestBody" in operation:
                        for code in (400, 413):
                            responses.setdefault(str(code), _envelope_answer(code, envelope))
                    answer = responses.get("422")
                    if answer is not None:
                        answer["description"] = "validation failed"
                        answer["content"] = {"application/json": {"schema": envelope}}
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
