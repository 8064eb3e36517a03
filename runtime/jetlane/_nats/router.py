"""A reply router: many requests over one inbox subscription, one sweeper for timeouts.

Design note. nats-py's request() makes a timer and a NUID per call and its
batch direct gets need a subscription per read; jetlane's hot paths (fenced
appends, schedules, history reads) send thousands a second. Here every
request gets a token under one wildcard inbox; replies are routed by token
(on the connection's fast lane when it has one), single replies resolve a
future, batch direct gets collect messages until their end-of-batch status,
and one task fails overdue requests.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .._core.errors import NatsTimeout, Unavailable
from .connection import _Connection
from .errors import nats_errors


@dataclass
class _Read:
    messages: list[Msg] = field(default_factory=list)
    done: asyncio.Future[Msg] | None = None


@dataclass
class Batch:
    """A batch direct get's messages, and its end-of-batch status message."""

    messages: list[Msg]
    end: Msg


class ReplyRouter:
    """Requests and batch reads over one inbox of ``nc``; ``timeout`` bounds each."""

    def __init__(self, nc: NATS, timeout: float) -> None:
        self.nc = nc
        self.timeout = timeout
        self._reads: dict[str, _Read] = {}
        self._prefix = ""
        self._ids = itertools.count()
        self._sub: Any = None
        self._replies: dict[str, asyncio.Future[Msg]] = {}
        self._deadlines: collections.deque[tuple[float, str]] = collections.deque()
        self._sweeper: asyncio.Task[None] | None = None

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    async def request(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None
    ) -> Msg:
        """A request and its reply (cheaper than nats-py's per-request timer and NUID)."""
        return await (await self.send(subject, data, headers))

    async def send(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None
    ) -> asyncio.Future[Msg]:
        """Send a request; the future of its reply. Requests leave in call order."""
        await self._ensure()
        token = str(next(self._ids))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._replies[token] = future
        future.add_done_callback(lambda _: self._replies.pop(token, None))
        self._deadlines.append((loop.time() + self.timeout, token))
        try:
            with nats_errors(f"a request on {subject}"):
                await self.nc.publish(
                    subject, data, reply=f"{self._prefix}.{token}", headers=headers
                )
        except BaseException:
            future.cancel()
            raise
        return future

    async def _sweep(self) -> None:
        # One task fails overdue requests, instead of a timer per request.
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(self.timeout / 4, 0.5))
            now = loop.time()
            while self._deadlines and self._deadlines[0][0] <= now:
                _, token = self._deadlines.popleft()
                future = self._replies.get(token)
                if future is not None and not future.done():
                    future.set_exception(NatsTimeout("NATS did not answer in time"))

    async def batch(self, subject: str, request: dict[str, Any]) -> Batch:
        """One batch direct get: the messages, then the end-of-batch status message."""
        await self._ensure()
        token = str(next(self._ids))
        pending = _Read(done=asyncio.get_running_loop().create_future())
        self._reads[token] = pending
        try:
            with nats_errors(f"a read of {subject}"):
                await self.nc.publish(
                    subject, msgspec.json.encode(request), reply=f"{self._prefix}.{token}"
                )
            assert pending.done is not None
            try:
                end = await asyncio.wait_for(pending.done, self.timeout)
            except TimeoutError:
                raise NatsTimeout(f"NATS did not answer a read of {subject} in time") from None
        finally:
            self._reads.pop(token, None)
        status = (end.headers or {}).get("Status")
        if status not in ("204", "404"):
            # 503 no responders (leader election, JetStream down), 408, ...: the read
            # did not happen. Never let that pass for an empty history.
            description = (end.headers or {}).get("Description", "")
            raise Unavailable(f"history read failed: status {status} {description}".strip())
        return Batch(pending.messages, end)

    async def _ensure(self) -> None:
        if self._sub is None:
            self._prefix = self.nc.new_inbox()
            with nats_errors("the reply inbox's subscription"):
                self._sub = await self.nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)
            if isinstance(self.nc, _Connection):
                self.nc.fast[self._sub._id] = self._route
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _on_reply(self, msg: Msg) -> None:
        self._route(msg)

    def _route(self, msg: Any) -> None:
        token = msg.subject[len(self._prefix) + 1 :]
        future = self._replies.pop(token, None)
        if future is not None:
            if not future.done():
                future.set_result(msg)
            return
        pending = self._reads.get(token)
        if pending is None or pending.done is None or pending.done.done():
            return
        if msg.headers and "Status" in msg.headers:
            pending.done.set_result(msg)
        else:
            pending.messages.append(msg)
