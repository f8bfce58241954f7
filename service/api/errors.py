"""One handler renders every error as ``{"error": {message, type, param, code}}`` with the class's status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.common import ErrorBody, ErrorDetail
from service.errors import GlassboxError

log = logging.getLogger(__name__)

INTERNAL_ERROR_MESSAGE = "internal error; it has been logged"

#: Starlette's own errors. A 400 is a body that failed before or during JSON decoding (invalid UTF-8, a
#: compressed body, nesting too deep for the parser, an integer past Python's digit limit): malformed.
_HTTP_TYPES = {
    400: "malformed_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}

#: For route decorators: every status a route can answer with, so OpenAPI documents them.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorBody,
        "description": "Malformed body: not JSON, not UTF-8, compressed, nested too deep, or a number too long.",
    },
    401: {"model": ErrorBody, "description": "API keys are enabled and the request has no valid bearer key."},
    404: {"model": ErrorBody, "description": "Unknown model, or an unknown path (a trailing slash is not redirected)."},
    405: {"model": ErrorBody, "description": "Method not allowed on this path (see the `Allow` header)."},
    408: {"model": ErrorBody, "description": "The request body did not arrive within the server's read timeout."},
    413: {"model": ErrorBody, "description": "Request body over the configured byte limit."},
    422: {"model": ErrorBody, "description": "Invalid field or header, or over a model or server limit."},
    429: {"model": ErrorBody, "description": "The model's slots and queue are full; retry after `Retry-After` s."},
    500: {"model": ErrorBody, "description": "Unexpected server error (logged with the request id)."},
    503: {
        "model": ErrorBody,
        "description": "Model not loaded yet, out of memory on this request, or the server is shutting down "
        "(see Retry-After).",
    },
    504: {"model": ErrorBody, "description": "The request's deadline passed (server limit or X-Request-Timeout-Ms)."},
}


def error_response(
    status: int,
    type_: str,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(message=message, type=type_, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def error_body(exc: GlassboxError) -> dict[str, Any]:
    detail = ErrorDetail(message=exc.message, type=exc.type, param=exc.param, code=exc.code)
    return ErrorBody(error=detail).model_dump()


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # pydantic adds the validator's name for model-level checks; that is not a field
    return ".".join(parts) or None


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"msg": "invalid request", "loc": (), "type": "value_error"}
    if first.get("type") == "json_invalid":
        return error_response(
            400, "malformed_request", f"the body is not valid JSON: {first.get('msg')}", code="json_invalid"
        )
    param = _loc_to_param(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return error_response(422, "invalid_request", message, param=param, code=str(first.get("type")))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GlassboxError)
    async def _glassbox(_: Request, exc: GlassboxError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=exc.status, headers=exc.headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, type_, str(exc.detail), headers=dict(exc.headers or {}))

    # The route's own failures are answered by the UnexpectedErrors middleware (which keeps the connection);
    # this one is left for a failure in the middleware above it, which Starlette answers and then re-raises.
    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", INTERNAL_ERROR_MESSAGE)
