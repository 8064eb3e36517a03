"""Pulling the runners' consumer: each delivery is handed on the moment it arrives.

Design note. nats-py's ``fetch(batch, timeout)`` returns a batch only when it
is full or the timeout passes, and a pull request it leaves lingering on the
server captures the next message for the *next* fetch: a start stored while
the runner was idle waited up to the fetch timeout (a second) before any
runner looked at it. Here one pull request at a time is kept open on the
server (``batch`` = free session slots, ``expires`` short); every message it
delivers goes to ``on_message`` at once, and a new request is sent as soon
as the current one ends (fulfilled, expired, or lost with a server restart).
Status messages for older requests are recognised by the token in their
reply subject and ignored; their deliveries (real messages) are still handed
on. A consumer that disappears (deleted, or lost with the server's state) is
created again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .connection import DEFAULT_API
from .errors import nats_errors

logger = structlog.get_logger("jetlane.runner")

# How long one pull request lingers on the server. Short, so that slots freed
# while it is open are asked for soon; each renewal is one small message.
EXPIRES = 1.0
# How long a delivery handed back by a stopping runner stays out of reach: longer
# than its last pull request can still be open, which the server would otherwise
# fill with the same delivery again at once (a bounce per free slot).
AWAY = EXPIRES + 0.5


class Delivery:
    """One delivery of the runners' consumer, as the runner sees it (never a nats Msg).

    ``ack`` (done with it), ``retry_later`` (deliver again after a delay),
    ``hand_back`` (deliver again now, to any runner), ``hand_over`` (deliver again
    once this runner's last pull request has ended: it is stopping), ``reject``
    (never again: it is dead-lettered), ``keep_alive`` (still working on it).
    """

    __slots__ = ("_msg", "attempt", "data", "headers", "seq", "subject")

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        meta = msg.metadata
        self.subject: str = msg.subject
        self.seq: int = meta.sequence.stream
        self.attempt: int = meta.num_delivered or 1
        self.headers: dict[str, str] = dict(msg.headers or {})
        self.data: bytes = msg.data

    async def ack(self) -> None:
        await self._settle(self._msg.ack())

    async def retry_later(self, delay: float) -> None:
        await self._settle(self._msg.nak(delay=delay))

    async def hand_back(self) -> None:
        await self._settle(self._msg.nak())

    async def hand_over(self) -> None:
        await self._settle(self._msg.nak(delay=AWAY))

    async def reject(self) -> None:
        await self._settle(self._msg.term())

    async def keep_alive(self) -> None:
        await self._settle(self._msg.in_progress())

    @staticmethod
    async def _settle(call: Awaitable[None]) -> None:
        # An ack that cannot be sent (connection gone) changes nothing that matters:
        # the delivery comes back after ack_wait and advancing it again is idempotent.
        with contextlib.suppress(Exception):
            await call


class Puller:
    """Keeps one pull request open on ``stream``/``consumer`` and hands deliveries on."""

    def __init__(
        self,
        nc: NATS,
        stream: str,
        consumer: str,
        on_message: Callable[[Delivery], Awaitable[None]],
        recreate: Callable[[], Awaitable[None]],
        *,
        expires: float = EXPIRES,
        api: str = DEFAULT_API,
    ) -> None:
        self.nc = nc
        self.expires = expires
        self.on_message = on_message
        self.recreate = recreate
        self._next = f"{api}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._prefix = ""
        self._sub: Any = None
        self._tokens = itertools.count()
        self._current = ""
        self._remaining = 0
        self._ended = asyncio.Event()
        self._lost = 0
        self._status = ""

    async def start(self) -> None:
        self._prefix = self.nc.new_inbox()
        with nats_errors("the pull inbox's subscription"):
            self._sub = await self.nc.subscribe(f"{self._prefix}.*", cb=self._on)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):  # teardown: a closed connection has none
                await self._sub.unsubscribe()

    async def pull(self, batch: int) -> None:
        """Ask for up to ``batch`` messages; return when that request has ended."""
        token = str(next(self._tokens))
        self._current, self._remaining, self._status = token, batch, ""
        self._ended.clear()
        request = {"batch": batch, "expires": int(self.expires * 1e9)}
        with nats_errors("a pull request"):
            await self.nc.publish(
                self._next, msgspec.json.encode(request), reply=f"{self._prefix}.{token}"
            )
        try:
            await asyncio.wait_for(self._ended.wait(), self.expires + 2.0)
        except TimeoutError:
            self._status = "lost"  # no answer at all: the server restarted, or is away
        if self._status not in ("lost", "503", "gone"):
            self._lost = 0
            return
        # 503: nobody answers the consumer's subject (deleted, or lost with the
        # server's state). After a few in a row, create the consumer again.
        self._lost += 1
        await asyncio.sleep(0.25)
        if self._lost >= 3 or self._status == "gone":
            self._lost = 0
            try:
                await self.recreate()
                logger.info("runner consumer re-created")
            except Exception as exc:  # the server may still be down: try later
                logger.warning("runner consumer could not be re-created", error=str(exc))

    async def _on(self, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is None and msg.reply:
            self._remaining -= 1
            if self._remaining <= 0:
                self._ended.set()
            await self.on_message(Delivery(msg))
            return
        if status == "100":
            return  # idle heartbeat
        token = msg.subject[len(self._prefix) + 1 :]
        if token != self._current:
            return  # the end of an older request
        if status == "409" and "Consumer Deleted" in headers.get("Description", ""):
            status = "gone"
        self._status = status or ""
        self._ended.set()  # 404/408: expired or nothing more; 409: ended by the server
