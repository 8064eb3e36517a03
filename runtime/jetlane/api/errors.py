"""The one place where exceptions become HTTP error responses.

Every error body is ``{"error": {"type", "message"[, "field"]}}``. jetlane's
own errors keep their type name and message (they are written for users);
anything unexpected is logged here with its traceback and answered with a
generic 500, so no stack trace or internal detail reaches a response.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response

from .._core.errors import (
    ConfigError,
    ConnectError,
    InputError,
    PayloadTooLarge,
    RunAlreadyExists,
    RunNotFound,
    Unavailable,
)
from .schema import ErrorBody, ErrorDetail

logger = structlog.get_logger("jetlane.api")

_encoder = msgspec.json.Encoder()
_AT = re.compile(r" - at `\$\.?([A-Za-z0-9_]*)")
_NAMED = re.compile(r"(?:required|unknown) field `([^`]*)`")


class ApiError(Exception):
    """An error answered as is: ``status`` with ``type``, ``message`` and maybe ``field``."""

    def __init__(self, status: int, type: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.field = field


def json_response(
    value: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(_encoder.encode(value), status, headers, media_type="application/json")


def error_json(
    status: int, type: str, message: str, field: str | None = None, **headers: str
) -> Response:
    body = ErrorBody(error=ErrorDetail(type=type, message=message, field=field))
    return json_response(body, status, headers or None)


def field_of(exc: msgspec.ValidationError) -> str | None:
    """The top-level field a msgspec validation message points at (None: the whole body)."""
    text = str(exc)
    at = _AT.search(text)
    if at and at.group(1):
        return at.group(1)
    named = _NAMED.search(text)
    return named.group(1) if named else None


def to_api_error(exc: Exception, *, field: str | None = None) -> ApiError | None:
    """The HTTP meaning of an error raised by the client, or None when it has none."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RunNotFound):
        return ApiError(404, "RunNotFound", str(exc))
    if isinstance(exc, RunAlreadyExists):
        return ApiError(409, "RunAlreadyExists", str(exc))
    if isinstance(exc, PayloadTooLarge):
        return ApiError(413, "PayloadTooLarge", str(exc), field)
    if isinstance(exc, InputError):
        return ApiError(422, "InputError", str(exc), "input")
    if isinstance(exc, ConfigError):
        return ApiError(422, "ConfigError", str(exc), field)
    if isinstance(exc, msgspec.ValidationError):
        return ApiError(422, "ValidationError", str(exc), field_of(exc))
    if isinstance(exc, msgspec.DecodeError):
        return ApiError(400, "MalformedJSON", "the body is not valid JSON")
    return None


def _unavailable(exc: Exception) -> bool:
    # NATS failures reach this layer translated (jetlane._nats.errors): Unavailable.
    return isinstance(exc, ConnectError | ConnectionError | TimeoutError | Unavailable)


def error_response(exc: Exception, request: Request) -> Response:
    known = to_api_error(exc)
    if known is not None:
        return error_json(known.status, known.type, known.message, known.field)
    if _unavailable(exc):
        logger.warning("nats unavailable", path=request.url.path, error=repr(exc))
        return error_json(503, "Unavailable", "the message log is unavailable; retry later")
    logger.exception("unhandled error", method=request.method, path=request.url.path)
    return error_json(500, "InternalError", "internal error (logged by the server)")


Endpoint = Callable[[Request], Awaitable[Response]]


def guarded(endpoint: Endpoint) -> Endpoint:
    """``endpoint`` with every exception it raises turned into a JSON error response."""

    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as exc:  # every error becomes a JSON answer (5xx logged)
            return error_response(exc, request)

    run.__name__ = endpoint.__name__
    run.__doc__ = endpoint.__doc__
    return run
