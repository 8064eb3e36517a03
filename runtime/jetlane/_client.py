"""The client: start runs, send events, read status, results and histories."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from ._core import history as h
from ._core.definition import get_job
from ._core.errors import (
    ConfigError,
    FenceLost,
    InputError,
    JetlaneError,
    NoResponders,
    PayloadTooLarge,
    RunAlreadyExists,
    RunEnded,
    RunFailedError,
    RunNotFound,
)
from ._core.replay import DEFAULT_MAX_PAYLOAD
from ._core.status import RunStatus, check_status_filter, summarize
from ._index import RunIndex
from ._nats.connection import ConnectOptions
from ._nats.log import Log
from ._nats.names import Names


def _arrived(status: RunStatus, history: list[h.Message]) -> str | None:
    """For a waiting run: the event it waits for that is already in its inbox, if any
    (sent while no runner was up, or not yet taken): honest, not 'pending'."""
    if status.status != "waiting" or not status.waiting_for:
        return None
    wanted = set(status.waiting_for.split("|"))
    taken = {
        m.body.input_seq
        for m in history
        if isinstance(m.body, h.EventReceived | h.WaitTimedOut) and m.body.input_seq is not None
    }
    stored = next(
        (
            m
            for m in history
            if isinstance(m.body, h.Event) and m.body.type in wanted and m.seq not in taken
        ),
        None,
    )
    if stored is None:
        return None
    assert isinstance(stored.body, h.Event)
    return (
        f"event {stored.body.type!r} is in its inbox (stored {stored.time}): the run takes "
        "it when a runner next advances it"
    )


@dataclass(frozen=True)
class RunHandle:
    """A started run: its ``run_id`` plus shortcuts to the client's per-run calls."""

    run_id: str
    client: Client

    @property
    def id(self) -> str:
        """The same as ``run_id`` (the name before 0.2; kept)."""
        return self.run_id

    async def result(self, timeout: float | None = None) -> Any:
        return await self.client.result(self.run_id, timeout=timeout)

    async def status(self) -> RunStatus:
        return await self.client.status(self.run_id)

    async def send_event(self, type: str, payload: Any = None, *, force: bool = False) -> bool:
        return await self.client.send_event(self.run_id, type, payload, force=force)

    async def cancel(self, reason: str | None = None) -> bool:
        return await self.client.cancel(self.run_id, reason)


class Client:
    """Talks to runs through the log; any number of clients and runners may share it."""

    def __init__(self, log: Log, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.log = log
        self.max_payload = max_payload

    async def close(self) -> None:
        await self.log.close()

    async def start(self, job: str, input: Any = None, *, run_id: str | None = None) -> RunHandle:
        """Start a run of ``job`` (create-once: a taken ``run_id`` raises ``RunAlreadyExists``).

        The input is checked against the job's input type first: by the local
        definition when this process has it, else by a runner that serves the
        job. With no runner serving the job the run is queued until one does.
        """
        h.check_job_name(job)
        run_id = h.check_run_id(run_id) if run_id is not None else uuid.uuid4().hex
        body = h.Start(job=job, input=input)
        self._check_size("input", body)
        await self._validate(job, input)
        await self._create_once(run_id, body)
        return RunHandle(run_id, self)

    async def _create_once(self, run_id: str, body: h.Start) -> None:
        """Store the start unless the run has one: ``RunAlreadyExists`` otherwise (see
        ``Log.create_once``)."""
        try:
            found = await self.log.create_once(run_id, body)
        except FenceLost:
            raise RunAlreadyExists(run_id) from None  # the inbox never stopped changing
        if found is not None:
            raise RunAlreadyExists(run_id)

    async def _validate(self, job: str, input: Any) -> None:
        local = get_job(job)
        if local is not None:
            local.validate_input(input)
            return
        subject = f"{self.log.names.prefix}.api.validate.{job}"
        try:
            reply = await self.log.ask(subject, msgspec.json.encode(input), timeout=2.0)
        except (NoResponders, TimeoutError):
            return  # no runner serves the job yet: the run waits for one
        answer = msgspec.json.decode(reply)
        if isinstance(answer, dict) and answer.get("error"):
            raise InputError(str(answer["error"]))

    def _check_size(self, what: str, body: h.Body) -> None:
        size = len(h.encode(body))
        if size > self.max_payload:
            raise PayloadTooLarge(
                f"{what} is {size} bytes; the limit is {self.max_payload} bytes; "
                "keep large data outside the run and pass a reference"
            )

    async def send_event(
        self,
        run_id: str,
        type: str,
        payload: Any = None,
        *,
        event_id: str | None = None,
        force: bool = False,
    ) -> bool:
        """Send an event to a run (``RunNotFound`` when it does not exist); True when
        the run had not ended.

        An event for a run that has ended raises ``RunEnded``, and nothing is
        stored. The check is exact: the event is stored fenced on the journal's
        last entry as read, so a run that ends between the check and the store
        refuses it too. ``force=True`` stores it anyway (and returns False when the
        run had ended): it stays in the history, after the end, and nothing acts on
        it. ``event_id`` makes the send idempotent within the stream's 2-minute
        duplicate window.
        """
        h.check_run_id(run_id)
        if not isinstance(type, str) or not type:
            raise ConfigError("an event needs a non-empty type")
        if event_id is not None and not h.JOB_NAME.fullmatch(event_id):
            raise ConfigError("event_id must be 1-128 of A-Z a-z 0-9 _ . : -")
        body = h.Event(type=type, payload=payload)
        self._check_size("event payload", body)
        msg_id = f"event:{run_id}:{event_id}" if event_id is not None else None
        for _ in range(100):
            last = await self.log.last_entry(run_id)
            if last is None and not await self.log.exists(run_id):
                raise RunNotFound(run_id)
            ended = last is not None and isinstance(last.body, h.TERMINAL)
            if ended and not force:
                assert last is not None
                raise RunEnded(run_id, h.ended_as(last.body))
            try:
                await self.log.publish_input(
                    run_id,
                    body,
                    msg_id=msg_id,
                    journal_at=None if force else (last.seq if last is not None else 0),
                )
            except FenceLost:
                continue  # an entry came in between: look again (it may be the end)
            return not ended
        raise JetlaneError(f"run {run_id!r} kept appending under 100 event sends in a row")

    async def cancel(self, run_id: str, reason: str | None = None) -> bool:
        """Ask a run to stop; False (and nothing sent) when it has already ended."""
        return await self._send_control(run_id, h.Cancel(reason=reason))

    async def pause(self, run_id: str, reason: str | None = None, *, by: str | None = None) -> bool:
        """Hold a run: no new step starts until ``resume`` (events and timers still
        arrive and are acted on, in stream order, once resumed). False when ended.
        ``by`` says who paused it (``jetlane pause`` sends user@host)."""
        return await self._send_control(run_id, h.Pause(reason=reason, by=by))

    async def resume(self, run_id: str) -> bool:
        """Let a paused run go on, and a step held on a result that could not be recorded
        run again (stored after the hold, it is the word that fixed code is deployed).
        False (and nothing sent) when the run has ended."""
        return await self._send_control(run_id, h.Resume())

    async def pin(self, run_id: str, build: str, reason: str | None = None) -> bool:
        """Move a run to the runners of ``build`` (rolling upgrades: re-pin a run whose
        build is drained). The ``pin`` input stays in its history. False when ended."""
        return await self._send_control(run_id, h.Pin(build=h.check_build_id(build), reason=reason))

    async def pin_build(self, old: str, build: str, reason: str | None = None) -> list[str]:
        """Re-pin every run of the index pinned to build ``old`` that has not ended to
        ``build`` (after ``old`` was drained); the run ids sent a ``pin``."""
        h.check_build_id(build)
        moved: list[str] = []
        cursor: str | None = None
        while True:
            page, cursor = await self.list_runs(build=old, limit=1000, cursor=cursor)
            for run in page:
                if not run.done and await self.pin(run.run_id, build, reason):
                    moved.append(run.run_id)
            if cursor is None:
                return moved

    async def waiting_runs(self) -> list[tuple[str, str, str]]:
        """(run id, job, why) of every run marked as waiting for a runner: ``unserved``
        (no runner serves its job), ``blocked`` (its code diverged) or ``build:<id>``
        (pinned to a build whose runners have not taken it)."""
        return [mark async for mark in self.log.waiting_runs()]

    async def _send_control(self, run_id: str, body: h.Cancel | h.Pause | h.Resume | h.Pin) -> bool:
        status = await self.status(run_id)
        if status.done:
            return False
        await self.log.publish_input(run_id, body)
        return True

    async def status(self, run_id: str) -> RunStatus:
        h.check_run_id(run_id)
        history = await self.log.read(run_id)
        status = summarize(run_id, history)
        if status is None:
            raise RunNotFound(run_id)
        status.detail = status.explain_due(datetime.now(UTC)) or _arrived(status, history)
        if status.status == "queued":
            if not await self.served(status.job):
                status.detail = f"no runner serves job {status.job!r}; the run starts when one does"
            elif await self.log.lease_holder(run_id) is not None:
                status.status = "running"  # a runner has it: its first step is under way
        elif not status.done:
            mark = await self.log.waiting_mark(run_id)
            if mark is not None and mark[1] == f"build:{status.build}":
                status.detail = (
                    f"waits for a runner of build {status.build!r} (drained?): start one, "
                    f"or re-pin it with `jetlane runs pin {run_id} --build NEW`"
                )
            elif mark is not None and mark[1] == "unserved":
                status.detail = (
                    f"no runner serves job {status.job!r} now (renamed or removed?); the "
                    "run goes on when one does"
                )
        return status

    async def jobs(self) -> dict[str, dict[str, Any]]:
        """The jobs live runners serve, by name: whether each takes an input, its JSON
        Schema and function-lane timeout (answers gathered until runners go quiet)."""
        found: dict[str, dict[str, Any]] = {}
        for reply in await self.log.gather(self.log.names.jobs_subject, b""):
            try:
                described = msgspec.json.decode(reply)
            except msgspec.DecodeError:
                continue  # not a runner's answer
            for job in described if isinstance(described, list) else []:
                if isinstance(job, dict) and isinstance(job.get("name"), str):
                    found.setdefault(job["name"], job)
        return found

    async def served(self, job: str) -> bool:
        """Whether any live runner serves ``job`` (runners answer its validation subject)."""
        subject = f"{self.log.names.prefix}.api.validate.{job}"
        for attempt in range(2):
            try:
                await self.log.ask(subject, b"null", timeout=1.0)
            except NoResponders:
                if attempt == 0:
                    # Asked once more before saying no: a refused start is worse than
                    # a 100 ms pause (a runner may be re-subscribing after a reconnect).
                    await asyncio.sleep(0.1)
                    continue
                return False
            except TimeoutError:
                return True  # a runner exists but is slow to answer
            return True
        return False

    async def result(self, run_id: str, *, timeout: float | None = None) -> Any:
        """Wait for the run to end; its output, or ``RunFailedError``."""
        h.check_run_id(run_id)
        async with asyncio.timeout(timeout):
            status = await self._wait_done(run_id)
        if status.status == "completed":
            return status.output
        error = status.error or h.ErrorInfo(type="Error", message=status.status)
        raise RunFailedError(run_id, status.status, error.type, error.message)

    async def _wait_done(self, run_id: str) -> RunStatus:
        # Journal entries are published by runners, so a core subscription sees them
        # (only fired timers bypass core subscribers, and they go to .in). Subscribe
        # first, then read: nothing falls in between. A periodic re-read covers
        # anything missed across a reconnect.
        async with self.log.watch_journal(run_id) as next_entry:
            history = await self.log.read(run_id)
            while True:
                status = summarize(run_id, history)
                if status is None:
                    raise RunNotFound(run_id)
                if status.done:
                    return status
                msg = await next_entry(2.0)
                if msg is None:
                    history = await self.log.read(run_id)
                elif isinstance(msg.body, h.TERMINAL):
                    history.append(msg)

    async def list_runs(
        self,
        *,
        job: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        build: str | None = None,
    ) -> tuple[list[RunStatus], str | None]:
        """Runs from the run index, newest first: one page and the next page's cursor.

        ``status`` is one of ``STATUS_FILTERS``: a status, or ``paused`` (``ConfigError``
        otherwise, naming them); ``build``: only runs pinned to that build."""
        if status is not None:
            check_status_filter(status)
        return await RunIndex(self.log).list(
            job=job, status=status, limit=limit, cursor=cursor, build=build
        )

    async def rebuild_index(self) -> int:
        """Recompute the run index from every history; the number of runs indexed."""
        return await RunIndex(self.log).rebuild()

    async def history(self, run_id: str, *, follow: bool = False) -> AsyncIterator[h.Message]:
        """The run's log in order, all of it (an event forced after the end comes after
        the end); with ``follow``, keep yielding until the run ends."""
        history = await self.log.read(h.check_run_id(run_id))
        if not history:
            raise RunNotFound(run_id)
        ended = False
        for msg in history:
            yield msg
            ended = ended or isinstance(msg.body, h.TERMINAL)
        if follow and not ended:
            async for msg in self.log.tail(self.log.names.run(run_id), history[-1].seq + 1):
                yield msg
                if isinstance(msg.body, h.TERMINAL):
                    return

    async def audit_feed(self, *, follow: bool = False) -> AsyncIterator[h.Message]:
        """Every run's history, in stream order (inputs and journals of all runs); with
        ``follow``, keep yielding what comes next (what ``jetlane history --all`` prints)."""
        names = self.log.names
        last = 0
        async for raw in self.log.read_raw(names.all_runs):
            msg = self.log.decode(raw)
            last = max(last, msg.seq)
            yield msg
        if follow:
            async for msg in self.log.tail(names.all_runs, last + 1):
                yield msg


@asynccontextmanager
async def connect(
    url: str | ConnectOptions = "nats://127.0.0.1:4222",
    *,
    names: Names | None = None,
    **options: Any,
) -> AsyncIterator[Client]:
    """``async with jetlane.connect(url) as client``: a client (the stream is created if absent)."""
    opts = url if isinstance(url, ConnectOptions) else ConnectOptions(url=url, **options)
    log = await Log.open(opts, names)
    client = Client(log)
    try:
        yield client
    finally:
        await client.close()
