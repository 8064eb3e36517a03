"""The HTTP API's bodies as msgspec Structs, and the OpenAPI document built from them.

Request bodies are decoded straight into these Structs, so the schema the
document publishes is the one the server enforces: a field that does not fit
is refused by the decoder, which names it. Unknown fields are refused too (a
misspelt ``id`` would otherwise start a run under a random one).
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec

from .._core.status import STATUS_FILTERS, RunStatus, Status

# ECMA-262 patterns (what JSON Schema speaks); the client's fullmatch checks stay the backstop.
RUN_ID_PATTERN: Final = "^[A-Za-z0-9_-]{1,128}$"
JOB_PATTERN: Final = "^[A-Za-z0-9_.:-]{1,128}$"
EVENT_ID_PATTERN: Final = "^[A-Za-z0-9_.:-]{1,128}$"

RunId = Annotated[str, msgspec.Meta(pattern=RUN_ID_PATTERN, description="1-128 of A-Z a-z 0-9 _ -")]
JobName = Annotated[
    str, msgspec.Meta(pattern=JOB_PATTERN, description="1-128 of A-Z a-z 0-9 _ . : -")
]


class _Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class StartRequest(_Body):
    """Start a run of ``job`` with ``input``; ``run_id`` makes the start create-once
    (``id`` is its old name, still accepted)."""

    job: JobName
    input: Any = None
    run_id: RunId | None = None
    id: RunId | None = None


class StartResponse(msgspec.Struct, kw_only=True):
    """The run created: ``run_id`` (``id`` repeats it, its old name)."""

    run_id: str
    id: str
    status: Status


class EventRequest(_Body):
    """An event for a run; ``event_id`` dedupes resends for the stream's duplicate window."""

    run_id: RunId
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    payload: Any = None
    event_id: Annotated[str, msgspec.Meta(pattern=EVENT_ID_PATTERN)] | None = None
    force: bool = False  # store it even when the run has ended (else 409 RunEnded)


class EventAccepted(msgspec.Struct, kw_only=True):
    run_id: str
    type: str
    after_end: bool = False  # forced for a run that had ended: stored, nothing acts on it


class CancelRequest(_Body):
    reason: Annotated[str, msgspec.Meta(max_length=1024)] | None = None


class PauseRequest(_Body):
    reason: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
    by: Annotated[str, msgspec.Meta(max_length=256)] | None = None  # who pauses (default "api")


class CancelAccepted(msgspec.Struct, kw_only=True):
    run_id: str
    cancelled: bool


class ControlAccepted(msgspec.Struct, kw_only=True):
    run_id: str
    paused: bool


class RunPage(msgspec.Struct, kw_only=True):
    """One page of runs, newest first; pass ``next_cursor`` as ``cursor`` for the next."""

    runs: list[RunStatus]
    next_cursor: str | None


class HistoryEntry(msgspec.Struct, kw_only=True):
    """One message of a run's log (its kinds and bodies: docs/protocol.md)."""

    seq: int
    run_id: str
    direction: str
    kind: str
    time: str
    body: Any


class ErrorDetail(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: str
    message: str
    field: str | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    error: ErrorDetail


class Health(msgspec.Struct, kw_only=True):
    status: str


class JobInfo(msgspec.Struct, kw_only=True):
    """A job a live runner serves: whether it takes an input, and that input's JSON Schema."""

    name: str
    takes_input: bool
    input_schema: Any = None
    timeout: float | None = None


class JobList(msgspec.Struct, kw_only=True):
    jobs: list[JobInfo]


_MODELS: Final = (
    StartRequest,
    StartResponse,
    EventRequest,
    EventAccepted,
    CancelRequest,
    PauseRequest,
    CancelAccepted,
    RunStatus,
    RunPage,
    HistoryEntry,
    ErrorBody,
    Health,
    JobInfo,
    JobList,
)
_REF: Final = "#/components/schemas/{name}"


def _ref(model: type[Any]) -> dict[str, Any]:
    return {"$ref": _REF.format(name=model.__name__)}


def _json(model: type[Any] | dict[str, Any], description: str) -> dict[str, Any]:
    schema = model if isinstance(model, dict) else _ref(model)
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "malformed JSON",
        401: "missing or wrong bearer token",
        404: "not found",
        409: "conflict",
        413: "body over the size limit",
        422: "a field does not fit; `error.field` names it",
        503: "the message log is unreachable",
    }
    return {str(code): _json(ErrorBody, text[code]) for code in codes}


def _body(model: type[Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(model)}}}


_ID_PARAM: Final = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": RUN_ID_PATTERN},
}


def _op(summary: str, responses: dict[str, Any], *, secured: bool, **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses, **extra}
    if secured:
        op["security"] = [{"bearer": []}]
        op["responses"] = {**responses, **_errors(401)}
    return op


def openapi(*, secured: bool, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API (``secured``: a bearer token is configured)."""
    _, components = msgspec.json.schema_components(_MODELS, ref_template=_REF)
    s = secured
    paths: dict[str, Any] = {
        "/runs": {
            "post": _op(
                "Start a run",
                {
                    "201": _json(StartResponse, "the run is created (queued for a runner)"),
                    **_errors(400, 404, 409, 413, 422, 503),
                },
                secured=s,
                requestBody=_body(StartRequest),
                description="404: no runner serves the job. 409: a run with this id exists. "
                "422: a field is invalid or the input does not fit the job's input type. "
                "The jobs served and each input's JSON Schema: GET /jobs, GET /jobs/{name}.",
            ),
            "get": _op(
                "List runs, newest first",
                {"200": _json(RunPage, "one page of runs"), **_errors(422, 503)},
                secured=s,
                parameters=[
                    {"name": "job", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"type": "string", "enum": list(STATUS_FILTERS)},
                        "description": "a status, or paused (paused runs, whatever their status)",
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
                    },
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
            ),
        },
        "/runs/events": {
            "post": _op(
                "Send an event to a run",
                {
                    "202": _json(EventAccepted, "the event is in the run's mailbox"),
                    **_errors(400, 404, 409, 413, 422, 503),
                },
                secured=s,
                requestBody=_body(EventRequest),
                description="409 RunEnded: the run has ended and nothing was stored; with "
                '"force": true the event is stored anyway, after the end, and nothing acts on it.',
            )
        },
        "/runs/{run_id}": {
            "get": _op(
                "A run's status",
                {"200": _json(RunStatus, "what the run is doing"), **_errors(404, 422, 503)},
                secured=s,
                parameters=[_ID_PARAM],
            )
        },
        "/runs/{run_id}/history": {
            "get": _op(
                "A run's log; with `Accept: text/event-stream`, followed live until the run ends",
                {
                    "200": {
                        "description": "the log (JSON), or Server-Sent Events: `id` is the "
                        "message's stream sequence, `event` its kind, `data` the entry as JSON",
                        "content": {
                            "application/json": {
                                "schema": {"type": "array", "items": _ref(HistoryEntry)}
                            },
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(404, 422, 503),
                },
                secured=s,
                parameters=[
                    _ID_PARAM,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "description": "resume a stream after this sequence",
                        "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
                    },
                ],
            )
        },
        "/runs/{run_id}/cancel": {
            "post": _op(
                "Cancel a run",
                {
                    "202": _json(CancelAccepted, "the cancel is in the run's mailbox"),
                    **_errors(400, 404, 409, 413, 422, 503),
                },
                secured=s,
                parameters=[_ID_PARAM],
                requestBody=_body(CancelRequest, required=False),
                description="409: the run has already ended.",
            )
        },
        "/runs/{run_id}/pause": {
            "post": _op(
                "Pause a run",
                {
                    "202": _json(ControlAccepted, "the pause is in the run's mailbox"),
                    **_errors(400, 404, 409, 413, 422, 503),
                },
                secured=s,
                parameters=[_ID_PARAM],
                requestBody=_body(PauseRequest, required=False),
                description="No new step starts until a resume; 409: the run has ended.",
            )
        },
        "/runs/{run_id}/resume": {
            "post": _op(
                "Resume a paused run",
                {
                    "202": _json(ControlAccepted, "the resume is in the run's mailbox"),
                    **_errors(404, 409, 503),
                },
                secured=s,
                parameters=[_ID_PARAM],
                description="409: the run has ended.",
            )
        },
        "/jobs": {
            "get": _op(
                "The jobs live runners serve",
                {"200": _json(JobList, "each job and its input schema"), **_errors(503)},
                secured=s,
                description="Start a run of one of these with POST /runs; its `input` must "
                "fit the job's `input_schema`.",
            )
        },
        "/jobs/{name}": {
            "get": _op(
                "One job a live runner serves",
                {"200": _json(JobInfo, "the job and its input schema"), **_errors(404, 503)},
                secured=s,
                parameters=[
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$"},
                    }
                ],
                description="404: no live runner serves the job.",
            )
        },
        "/openapi.json": {
            "get": _op(
                "This document",
                {"200": _json({"type": "object"}, "the OpenAPI document")},
                secured=False,
            )
        },
        "/healthz": {
            "get": _op("The process is alive", {"200": _json(Health, "alive")}, secured=False)
        },
        "/readyz": {
            "get": _op(
                "Connected to NATS",
                {"200": _json(Health, "ready"), **_errors(503)},
                secured=False,
            )
        },
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "jetlane", "version": version},
        "paths": paths,
        "components": {"schemas": components},
    }
    if secured:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc
