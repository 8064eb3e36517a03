"""Following a subject of the runs stream with direct gets only: the tail of a client account.

Design note. A client in its own account (deploy/nats-values.yaml: CLIENTS)
imports only the read part of the JetStream API (direct gets, stream info).
It cannot create consumers: a consumer is made in the account of the stream,
and one with a ``deliver_subject`` in its body would deliver onto any subject
there (the runners' services, the timers stream, the JetStream API itself),
which no permission checks. So such a client follows a subject by reading
from the next sequence: batch direct gets, woken by the journal entries it
hears (the account imports ``<prefix>.run.*.out``) and every ``POLL``
seconds otherwise (inputs and fired timers arrive on no subscription).

A tail of one run reads its two literal subjects (a wildcard ``next_by_subj``
makes the server scan to the end of the stream, see ``Log.read``), up to the
run's last sequence asked for first: every message of the run at or below it
was stored before either read began, so the merge holds every one of them
and nothing after the horizon is passed over. Any other subject (every run:
``<prefix>.run.>``) is read by one batch direct get, in stream order. Every
message comes once, in stream order, across server restarts (a failed read
is retried from the same sequence).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any, Final

import msgspec
from nats.aio.msg import Msg

from .._core import history as h
from .._core.errors import JetlaneError
from .errors import nats_errors

if TYPE_CHECKING:
    from .log import Log

POLL: Final = 0.5
"""Seconds between reads when no journal entry wakes the tail."""
RETRY: Final = 0.25
"""First pause before reading again after a failed read (doubles, to 2 s)."""


class PolledTail:
    """One tail of ``subject`` from stream sequence ``start`` (see the module note)."""

    def __init__(self, log: Log, subject: str, start: int) -> None:
        self.log = log
        self.subject = subject
        self.next_seq = max(start, 1)
        names = log.names
        parsed = names.parse(subject)
        self.run_id = parsed[0] if parsed is not None and subject == names.run(parsed[0]) else None
        if self.run_id is not None:
            self.wake: str | None = names.journal(self.run_id)
        elif subject == names.all_runs:
            self.wake = f"{names.prefix}.run.*.out"
        else:
            self.wake = None

    async def follow(self) -> AsyncGenerator[h.Message]:
        woken = asyncio.Event()

        async def wake(_: Msg) -> None:
            woken.set()

        sub: Any = None
        if self.wake is not None:
            with nats_errors(f"a tail of {self.subject}"):
                sub = await self.log.nc.subscribe(self.wake, cb=wake)
        first = True
        pause = RETRY
        try:
            while True:
                woken.clear()  # before the read: an entry stored during it wakes the next
                try:
                    async for msg in self._read():
                        yield msg
                except JetlaneError:
                    if first:
                        raise  # e.g. no permission to read: say so at once
                    await asyncio.sleep(pause)  # the server may be restarting
                    pause = min(pause * 2, 2.0)
                    continue
                first, pause = False, RETRY
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), POLL)
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):  # teardown: a closed connection has none
                    await sub.unsubscribe()

    def _read(self) -> AsyncIterator[h.Message]:
        return self._read_run(self.run_id) if self.run_id is not None else self._read_any()

    async def _read_run(self, run_id: str) -> AsyncIterator[h.Message]:
        log = self.log
        reply = await log._request(
            log._direct,
            msgspec.json.encode({"last_by_subj": log.names.run_inputs_and_journal(run_id)}),
        )
        headers = reply.headers or {}
        status = headers.get("Status")
        if status == "404":
            return  # nothing stored for the run yet
        if status is not None:
            raise JetlaneError(f"a tail of run {run_id!r} failed: status {status}")
        horizon = int(headers.get("Nats-Sequence", "0"))
        if horizon < self.next_seq:
            return
        for msg in await log.read(run_id, after=self.next_seq - 1):
            if msg.seq > horizon:
                return  # read again next time, with whatever came between
            self.next_seq = msg.seq + 1
            yield msg

    async def _read_any(self) -> AsyncIterator[h.Message]:
        async for raw in self.log.read_raw(self.subject, self.next_seq):
            msg = self.log.decode(raw)
            self.next_seq = msg.seq + 1
            yield msg
