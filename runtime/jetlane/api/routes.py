"""The API's endpoints: thin translations of HTTP requests into ``Client`` calls.

Design note: a start for a job that no live runner serves is refused with 404
(by default) rather than queued. An HTTP caller has no other early signal
that it misspelt a job or targets the wrong cluster, and a queued run of a
job nobody serves waits forever. The check asks the job's validation subject,
which every runner serving the job answers, so it costs one round trip and
is exactly as current as the runner pool. Deployments that scale runners to
zero (so that no runner may be up when a start arrives) set
``queue_unserved=True``: then such a start is accepted as queued, and the
run's status says that no runner serves its job until one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import typing
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeVar

import anyio
import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from .._client import Client
from .._core import history as h
from .._core.definition import did_you_mean
from .._core.errors import ConfigError, PayloadTooLarge, RunEnded
from .._core.status import check_status_filter
from .errors import ApiError, json_response, logger
from .schema import (
    CancelAccepted,
    CancelRequest,
    ControlAccepted,
    EventAccepted,
    EventRequest,
    Health,
    HistoryEntry,
    JobInfo,
    JobList,
    PauseRequest,
    RunPage,
    StartRequest,
    StartResponse,
)

T = TypeVar("T")

HEARTBEAT = 15.0  # seconds between SSE comments: proxies keep the stream, dead peers show up
_encoder = msgspec.json.Encoder()


def _checked(check: typing.Callable[[str], str], value: str, field: str) -> str:
    try:
        return check(value)
    except ConfigError as exc:
        raise ApiError(422, "ConfigError", str(exc), field) from None


@dataclass
class Endpoints:
    """The endpoints over one ``Client``; bound methods are the Starlette routes."""

    client: Client
    max_body: int
    queue_unserved: bool
    openapi_doc: bytes

    async def _body(self, request: Request, model: type[T], *, optional: bool = False) -> T:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            raise self._too_large()
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body:
                    raise self._too_large()
                chunks.append(chunk)
        except ClientDisconnect:
            raise ApiError(400, "ClientDisconnect", "the client went away") from None
        data = b"".join(chunks)
        if optional and not data.strip():
            return model()
        return msgspec.json.decode(data, type=model)

    def _too_large(self) -> ApiError:
        return ApiError(413, "PayloadTooLarge", f"the body is over {self.max_body} bytes")

    def _run_id(self, request: Request) -> str:
        return _checked(h.check_run_id, request.path_params["run_id"], "run_id")

    async def start(self, request: Request) -> Response:
        """POST /runs."""
        req = await self._body(request, StartRequest)
        _checked(h.check_job_name, req.job, "job")
        if req.run_id is not None and req.id is not None and req.run_id != req.id:
            raise ApiError(422, "ValidationError", "run_id and id (its old name) differ", "run_id")
        run_id = req.run_id if req.run_id is not None else req.id
        if run_id is not None:
            _checked(h.check_run_id, run_id, "run_id")
        if not self.queue_unserved and not await self.client.served(req.job):
            raise ApiError(404, "JobNotServed", f"no runner serves job {req.job!r}", "job")
        try:
            handle = await self.client.start(req.job, req.input, run_id=run_id)
        except PayloadTooLarge as exc:
            raise ApiError(413, "PayloadTooLarge", str(exc), "input") from None
        started = StartResponse(run_id=handle.run_id, id=handle.run_id, status="queued")
        return json_response(started, 201)

    async def send_event(self, request: Request) -> Response:
        """POST /runs/events."""
        req = await self._body(request, EventRequest)
        _checked(h.check_run_id, req.run_id, "run_id")
        try:
            live = await self.client.send_event(
                req.run_id, req.type, req.payload, event_id=req.event_id, force=req.force
            )
        except PayloadTooLarge as exc:
            raise ApiError(413, "PayloadTooLarge", str(exc), "payload") from None
        except RunEnded as exc:
            raise ApiError(409, "RunEnded", str(exc)) from None
        return json_response(
            EventAccepted(run_id=req.run_id, type=req.type, after_end=not live), 202
        )

    async def status(self, request: Request) -> Response:
        """GET /runs/{run_id}."""
        return json_response(await self.client.status(self._run_id(request)))

    async def cancel(self, request: Request) -> Response:
        """POST /runs/{run_id}/cancel."""
        run_id = self._run_id(request)
        req = await self._body(request, CancelRequest, optional=True)
        if not await self.client.cancel(run_id, req.reason):
            raise ApiError(409, "RunEnded", f"run {run_id!r} has already ended")
        return json_response(CancelAccepted(run_id=run_id, cancelled=True), 202)

    async def pause(self, request: Request) -> Response:
        """POST /runs/{run_id}/pause."""
        run_id = self._run_id(request)
        req = await self._body(request, PauseRequest, optional=True)
        if not await self.client.pause(run_id, req.reason, by=req.by or "api"):
            raise ApiError(409, "RunEnded", f"run {run_id!r} has already ended")
        return json_response(ControlAccepted(run_id=run_id, paused=True), 202)

    async def resume(self, request: Request) -> Response:
        """POST /runs/{run_id}/resume."""
        run_id = self._run_id(request)
        if not await self.client.resume(run_id):
            raise ApiError(409, "RunEnded", f"run {run_id!r} has already ended")
        return json_response(ControlAccepted(run_id=run_id, paused=False), 202)

    async def list_runs(self, request: Request) -> Response:
        """GET /runs?job=&status=&limit=&cursor=."""
        q = request.query_params
        job = q.get("job") or None
        if job is not None:
            _checked(h.check_job_name, job, "job")
        status = q.get("status") or None
        if status is not None:
            _checked(check_status_filter, status, "status")
        raw_limit = q.get("limit") or "50"
        if not (raw_limit.isascii() and raw_limit.isdigit() and 1 <= int(raw_limit) <= 1000):
            raise ApiError(422, "ConfigError", "limit must be an integer from 1 to 1000", "limit")
        try:
            runs, cursor = await self.client.list_runs(
                job=job, status=status, limit=int(raw_limit), cursor=q.get("cursor") or None
            )
        except ValueError as exc:  # the index's page() refusing a cursor it did not issue
            raise ApiError(422, "ConfigError", str(exc), "cursor") from None
        return json_response(RunPage(runs=runs, next_cursor=cursor))

    async def history(self, request: Request) -> Response:
        """GET /runs/{run_id}/history (JSON, or live Server-Sent Events)."""
        run_id = self._run_id(request)
        if "text/event-stream" not in request.headers.get("accept", ""):
            entries = [m.to_json() async for m in self.client.history(run_id)]
            return json_response(entries)
        after = request.headers.get("last-event-id", "").strip() or "0"
        if not (after.isascii() and after.isdigit() and len(after) < 20):
            raise ApiError(422, "ConfigError", "Last-Event-ID must be a sequence", "Last-Event-ID")
        messages = self.client.history(run_id, follow=True)
        try:
            first = await anext(messages)  # RunNotFound here is still a plain 404
        except BaseException:
            await _close(messages)
            raise
        return StreamingResponse(
            _sse(first, messages, after=int(after)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def openapi(self, request: Request) -> Response:
        return Response(self.openapi_doc, media_type="application/json")

    async def jobs(self, request: Request) -> Response:
        """GET /jobs."""
        served = await self.client.jobs()
        listed = [msgspec.convert(served[name], JobInfo) for name in sorted(served)]
        return json_response(JobList(jobs=listed))

    async def job(self, request: Request) -> Response:
        """GET /jobs/{name}."""
        name = str(request.path_params["name"])
        served = await self.client.jobs()
        if name not in served:
            hint = did_you_mean(name, served)
            raise ApiError(404, "JobNotServed", f"no runner serves job {name!r}{hint}", "name")
        return json_response(msgspec.convert(served[name], JobInfo))

    async def healthz(self, request: Request) -> Response:
        return json_response(Health(status="ok"))

    async def readyz(self, request: Request) -> Response:
        if self.client.log.connected:
            return json_response(Health(status="ready"))
        raise ApiError(503, "NotReady", "not connected to NATS")


async def _close(messages: AsyncIterator[h.Message]) -> None:
    # Client.history is an async generator typed as an iterator: close it if it can be.
    aclose = getattr(messages, "aclose", None)
    if aclose is not None:
        await aclose()


def _frame(msg: h.Message) -> bytes:
    entry = msgspec.convert(msg.to_json(), HistoryEntry)
    data = _encoder.encode(entry).decode()
    return f"id: {msg.seq}\nevent: {msg.kind}\ndata: {data}\n\n".encode()


async def _sse(
    first: h.Message, rest: AsyncIterator[h.Message], *, after: int
) -> AsyncIterator[bytes]:
    """Frames for ``first`` and ``rest`` (those past ``after``), with heartbeats between."""
    pending: asyncio.Future[h.Message] | None = None
    try:
        if first.seq > after:
            yield _frame(first)
        if isinstance(first.body, h.TERMINAL):
            return
        pending = asyncio.ensure_future(anext(rest))
        while True:
            done, _ = await asyncio.wait({pending}, timeout=HEARTBEAT)
            if not done:
                yield b": keep-alive\n\n"
                continue
            try:
                msg = pending.result()
            except StopAsyncIteration:
                return
            except Exception:
                # Headers are sent: the status cannot change, so end with an error event.
                logger.exception("history stream failed", run_id=first.run_id)
                yield (
                    b'event: error\ndata: {"error": {"type": "Unavailable", '
                    b'"message": "the stream broke; reconnect with Last-Event-ID"}}\n\n'
                )
                return
            if msg.seq > after:
                yield _frame(msg)
            pending = asyncio.ensure_future(anext(rest))
    finally:
        # Runs on normal end, on error, and when the client disconnects (the response
        # cancels this generator): stop the tail so its consumer is deleted.
        with anyio.CancelScope(shield=True):
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            with contextlib.suppress(Exception):  # teardown of the client's stream
                await _close(rest)
