"""The HTTP API: an ASGI app over a ``Client``, and ``serve_api`` to run it with uvicorn.

Routes (every error body is ``{"error": {"type", "message"[, "field"]}}``)::

    POST /runs                 {job, input, id?}          201 {id, status}
    POST /runs/events          {run_id, type, payload}    202
    GET  /runs                 ?job=&status=&limit=&cursor=   newest first
    GET  /runs/{run_id}            the run's status
    GET  /runs/{run_id}/history    the log as JSON; Accept: text/event-stream follows it live
    POST /runs/{run_id}/cancel     {reason?}                  202
    POST /runs/{run_id}/pause      {reason?}                  202
    POST /runs/{run_id}/resume                                202
    GET  /jobs, /jobs/{name}       the jobs live runners serve, with input schemas
    GET  /openapi.json, /healthz, /readyz

Starlette was chosen over a larger framework: it is small, maintained, built
on anyio like the rest of jetlane, and its plain routing leaves request
bodies to msgspec, whose Structs are both the validation and (through
``msgspec.json.schema``) the published OpenAPI schemas.
"""

from __future__ import annotations

import hmac
from importlib import metadata

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .._client import Client
from .errors import Endpoint, error_json, error_response, guarded
from .routes import Endpoints
from .schema import openapi

DEFAULT_MAX_BODY = 1 << 20
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"})
"""Paths served without a token: probes carry none, and the document holds no data."""


class _BearerAuth:
    """Answers 401 outside ``OPEN_PATHS`` unless ``Authorization: Bearer <token>`` is sent."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, given = header.partition(b" ")
            # compare_digest on bytes: constant time, and no TypeError on non-ASCII input
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)):
                response = error_json(
                    401,
                    "Unauthorized",
                    "a valid bearer token is required",
                    **{"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
    response = error_json(exc.status_code, kind, str(exc.detail))
    response.headers.update(exc.headers or {})
    return response


async def _server_error(request: Request, exc: Exception) -> Response:
    return error_response(exc, request)


def _by_method(**endpoints: Endpoint) -> Endpoint:
    """One route, several methods: so a 405 lists every method the path allows."""
    guarded_endpoints = {method: guarded(endpoint) for method, endpoint in endpoints.items()}

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await guarded_endpoints[method](request)

    return dispatch


def _version() -> str:
    try:
        return metadata.version("jetlane")
    except metadata.PackageNotFoundError:
        return "0"


def create_app(
    client: Client,
    *,
    token: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    queue_unserved: bool = False,
) -> Starlette:
    """The API as an ASGI app over ``client``.

    Args:
        client: the connected client every request goes through.
        token: when set, every route but ``/healthz``, ``/readyz`` and
            ``/openapi.json`` needs ``Authorization: Bearer <token>``.
        max_body: request bodies over this many bytes are refused with 413.
        queue_unserved: accept a start for a job no runner serves (queued)
            instead of refusing it with 404; for runner pools that scale to zero.
    """
    doc = msgspec.json.encode(openapi(secured=token is not None, version=_version()))
    api = Endpoints(client, max_body, queue_unserved, doc)
    routes = [
        Route("/runs", _by_method(GET=api.list_runs, POST=api.start), methods=["GET", "POST"]),
        Route("/runs/events", guarded(api.send_event), methods=["POST"]),
        Route("/runs/{run_id}", guarded(api.status), methods=["GET"]),
        Route("/runs/{run_id}/history", guarded(api.history), methods=["GET"]),
        Route("/runs/{run_id}/cancel", guarded(api.cancel), methods=["POST"]),
        Route("/runs/{run_id}/pause", guarded(api.pause), methods=["POST"]),
        Route("/runs/{run_id}/resume", guarded(api.resume), methods=["POST"]),
        Route("/jobs", guarded(api.jobs), methods=["GET"]),
        Route("/jobs/{name}", guarded(api.job), methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", guarded(api.readyz), methods=["GET"]),
    ]
    middleware = [Middleware(_BearerAuth, token=token)] if token else []
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )


def api_server(
    client: Client,
    host: str,
    port: int,
    *,
    token: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    queue_unserved: bool = False,
) -> uvicorn.Server:
    """A uvicorn server for the API, not yet started (``await server.serve()``)."""
    app = create_app(client, token=token, max_body=max_body, queue_unserved=queue_unserved)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        log_config=None,  # logging belongs to the host program (the CLI configures structlog)
        server_header=False,
        timeout_graceful_shutdown=5,  # followers of live histories never end on their own
    )
    return uvicorn.Server(config)


async def serve_api(
    client: Client,
    host: str,
    port: int,
    token: str | None = None,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    queue_unserved: bool = False,
) -> None:
    """Serve the API on ``host:port`` until the process is told to stop (SIGINT/SIGTERM)."""
    server = api_server(
        client, host, port, token=token, max_body=max_body, queue_unserved=queue_unserved
    )
    await server.serve()
