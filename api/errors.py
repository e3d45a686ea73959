"""Typed API errors and the one error envelope every 4xx/5xx response uses.

Routes and services raise :class:`ApiError` subclasses; the handlers here turn them, and
FastAPI's/Starlette's own errors, into ``{"error": {"type", "message", "details"}}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

MAX_DETAILS = 200  # validation lists every problem, up to this cap


class ErrorDetail(BaseModel):
    loc: str = Field(description="JSON pointer into the request body, e.g. /training_data/examples/3/text")
    message: str
    location: str | None = Field(
        default=None, description="where loc points when it is not the body: query, path or header"
    )


class ErrorBody(BaseModel):
    type: str = Field(
        description="validation_error | invalid_request | authentication_error | not_found | "
        "method_not_allowed | conflict | payload_too_large | unsupported_media_type | "
        "rate_limited | internal_error | service_unavailable"
    )
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    status_code = 500
    type = "internal_error"

    def __init__(
        self,
        message: str,
        details: Sequence[ErrorDetail] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)[:MAX_DETAILS]
        self.headers = headers


class ValidationFailed(ApiError):
    status_code = 422
    type = "validation_error"


class InvalidRequest(ApiError):
    status_code = 400
    type = "invalid_request"


class Unauthenticated(ApiError):
    status_code = 401
    type = "authentication_error"


class NotFound(ApiError):
    status_code = 404
    type = "not_found"


class Conflict(ApiError):
    status_code = 409
    type = "conflict"


class PayloadTooLarge(ApiError):
    status_code = 413
    type = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status_code = 415
    type = "unsupported_media_type"


class RateLimited(ApiError):
    status_code = 429
    type = "rate_limited"


class ServiceUnavailable(ApiError):
    status_code = 503
    type = "service_unavailable"


_STATUS_TYPES = {
    400: "invalid_request",
    401: "authentication_error",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "service_unavailable",
}


def envelope(status: int, type_: str, message: str, details: Iterable[ErrorDetail] = ()) -> dict[str, Any]:
    body = ErrorBody(type=type_, message=message, details=list(details)[:MAX_DETAILS])
    return {"error": body.model_dump(exclude_none=True)}


def error_response(
    status: int,
    type_: str,
    message: str,
    details: Iterable[ErrorDetail] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(envelope(status, type_, message, details), status_code=status, headers=headers)


def json_pointer(parts: Iterable[str | int]) -> str:
    """RFC 6901: ``~`` and ``/`` inside a segment are escaped."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _pydantic_detail(err: dict[str, Any], prefixed: bool) -> ErrorDetail:
    loc = list(err.get("loc", ()))
    where, rest = (str(loc[0]) if loc else "body", loc[1:]) if prefixed else ("body", loc)
    if err.get("type") == "json_invalid":
        ctx = err.get("ctx") or {}
        return ErrorDetail(loc="", message=f"malformed JSON: {ctx.get('error', err.get('msg'))}")
    message = str(err.get("msg", "invalid value"))
    if where == "body":
        return ErrorDetail(loc=json_pointer(rest), message=message)
    return ErrorDetail(loc=json_pointer(rest), message=message, location=where)


def details_from_pydantic(errors: Sequence[Any], prefixed: bool = True) -> list[ErrorDetail]:
    """``prefixed``: FastAPI's locs start with body/query/path/header; a model's own do not."""
    return [_pydantic_detail(dict(e), prefixed) for e in errors]


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.type, exc.message, exc.details, exc.headers)


async def _request_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = details_from_pydantic(exc.errors())
    malformed = any(e.get("type") == "json_invalid" for e in exc.errors())
    message = "the request body is not valid JSON" if malformed else "the request is invalid"
    return error_response(422, "validation_error", message, details)


async def _http_exception(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    type_ = _STATUS_TYPES.get(
        exc.status_code, "internal_error" if exc.status_code >= 500 else "invalid_request"
    )
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, type_, detail, headers=headers)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(Exception, _unhandled)


def _response(description: str) -> dict[str, Any]:
    return {"model": ErrorEnvelope, "description": description}


# Attached to every route, so the OpenAPI schema documents each error a client can get.
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _response("missing, unknown or revoked API key (authentication_error)"),
    404: _response("no such resource in this project (not_found)"),
    405: _response("method not allowed on this path (method_not_allowed)"),
    413: _response("request body larger than the configured limit (payload_too_large)"),
    422: _response("invalid request: every problem listed with a JSON-pointer loc (validation_error)"),
    429: _response("rate limit for this API key exceeded; see Retry-After (rate_limited)"),
    500: _response("unexpected server error (internal_error)"),
}


def errors(*extra: int) -> dict[int | str, dict[str, Any]]:
    out = dict(COMMON_ERRORS)
    descriptions = {
        400: "malformed request (invalid_request)",
        409: "conflict with the resource's current state (conflict)",
        415: "unsupported Content-Type (unsupported_media_type)",
        503: "a dependency is unavailable (service_unavailable)",
    }
    for code in extra:
        out[code] = _response(descriptions[code])
    return out
