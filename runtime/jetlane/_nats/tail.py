"""Following a subject of the runs stream: a named ephemeral pull consumer per tail.

Design note. A tail is a JetStream consumer, not a core subscription: fired
timers are stored in the stream without passing through core subscribers.
It used to be nats-py's ordered (push) consumer, whose create subject carries
no consumer name (``$JS.API.CONSUMER.CREATE.<stream>``): a role allowed that
subject may name the runners' consumer in the body and rewrite it, and may
create push consumers that deliver anywhere. So a tail creates its consumer
with the name in the subject, ``$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>``
(the server takes the name from the subject and refuses a body whose filter
differs), which permissions can match. Only the runners' account uses this
tail: the other roles (account CLIENTS in deploy/nats-values.yaml) import no
consumer API and follow with direct gets (``PolledTail``, poll.py). The name
is ``tail-<random hex>``: nobody else can guess it to read, pull or delete it.

The consumer acknowledges nothing (``ack_policy: none``), lives in memory on
one replica, and the server removes it ``INACTIVE`` seconds after its last
pull request (the client went away). One pull request at a time is open:
``BATCH`` messages or ``EXPIRES`` seconds, with idle heartbeats every
``HEARTBEAT`` seconds. A tail that hears nothing for ``LOST`` seconds (server
restarted, connection lost), sees a gap in the consumer's sequence, or is
told the consumer is gone creates a new consumer, under a new name, from the
stream sequence after the last one it yielded: nothing is lost or repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any, Final

import msgspec
from nats.aio.msg import Msg

from .._core import history as h
from .._core.errors import JetlaneError
from .errors import nats_errors

if TYPE_CHECKING:
    from .log import Log

BATCH: Final = 1000
EXPIRES: Final = 10.0
HEARTBEAT: Final = 1.0
LOST: Final = 3 * HEARTBEAT
INACTIVE: Final = 30.0
RETRY: Final = 0.25
"""First pause before creating the consumer again after a failed attempt (doubles, to 2 s)."""

# Errors that a server which is starting (or electing a leader) answers with.
_TRANSIENT: Final = frozenset({10008, 10039, 10059, 10076})


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class _Reset(Exception):
    """The consumer is lost (gone, silent, or a gap): create a new one."""


class Tail:
    """One tail of ``subject`` from stream sequence ``start`` (see the module note)."""

    def __init__(self, log: Log, subject: str, start: int) -> None:
        self.log = log
        self.subject = subject
        self.stream = log.names.stream
        self.next_seq = max(start, 1)
        self.name = ""

    async def follow(self) -> AsyncGenerator[h.Message]:
        nc = self.log.nc
        first = True
        pause = RETRY
        while True:
            inbox = nc.new_inbox()
            with nats_errors(f"a tail of {self.subject}"):
                sub = await nc.subscribe(inbox)
            try:
                try:
                    await self._create()
                except JetlaneError as exc:
                    if first or isinstance(exc, _Refused):
                        explained = self._explained(exc)  # e.g. no permission to tail
                        if explained is exc:
                            raise
                        raise explained from exc
                    await asyncio.sleep(pause)  # the server may still be starting
                    pause = min(pause * 2, 2.0)
                    continue
                first, pause = False, RETRY
                async for msg in self._pull(sub, inbox):
                    yield msg
            except _Reset:
                continue
            finally:
                with contextlib.suppress(Exception):  # teardown: a closed connection has none
                    await sub.unsubscribe()
                await self._delete()

    async def _create(self) -> None:
        """Create a consumer under a fresh name from ``next_seq``."""
        self.name = f"tail-{secrets.token_hex(12)}"
        config = {
            "name": self.name,
            "deliver_policy": "by_start_sequence",
            "opt_start_seq": self.next_seq,
            "ack_policy": "none",
            "replay_policy": "instant",
            "filter_subject": self.subject,
            "inactive_threshold": _ns(INACTIVE),
            "num_replicas": 1,
            "mem_storage": True,
        }
        request = {"stream_name": self.stream, "config": config, "action": "create"}
        subject = f"{self.log.api}.CONSUMER.CREATE.{self.stream}.{self.name}.{self.subject}"
        what = f"a tail of {self.subject}"
        with nats_errors(what):
            reply = await self.log.nc.request(
                subject, msgspec.json.encode(request), timeout=self.log.timeout
            )
        if (reply.headers or {}).get("Status") == "503":
            raise JetlaneError(f"JetStream did not answer {what}")
        answer = msgspec.json.decode(reply.data)
        error = answer.get("error") if isinstance(answer, dict) else None
        if error is not None:
            code = int(error.get("err_code", 0))
            text = f"JetStream refused {what}: {error.get('description', 'error')} ({code})"
            if code in _TRANSIENT:
                raise JetlaneError(text)
            raise _Refused(text)

    async def _pull(self, sub: Any, inbox: str) -> AsyncIterator[h.Message]:
        """Messages of the current consumer, pulled one request at a time."""
        nc = self.log.nc
        pull = msgspec.json.encode(
            {"batch": BATCH, "expires": _ns(EXPIRES), "idle_heartbeat": _ns(HEARTBEAT)}
        )
        next_subject = f"{self.log.api}.CONSUMER.MSG.NEXT.{self.stream}.{self.name}"
        delivered = 0  # the consumer's sequence of the last message
        while True:
            with nats_errors(f"a tail's pull request on {self.subject}"):
                await nc.publish(next_subject, pull, reply=inbox)
            remaining = BATCH
            while remaining > 0:
                try:
                    raw: Msg = await sub.next_msg(timeout=LOST)
                except TimeoutError:  # nats-py's timeout is one: not even a heartbeat
                    raise _Reset from None
                headers = raw.headers or {}
                status = headers.get("Status")
                if status is None and raw.reply:
                    remaining -= 1
                    meta = raw.metadata
                    if meta.sequence.consumer != delivered + 1:
                        raise _Reset  # a gap: start again after the last one yielded
                    delivered = meta.sequence.consumer
                    if meta.sequence.stream < self.next_seq:
                        continue  # already yielded (cannot happen from a fresh consumer)
                    self.next_seq = meta.sequence.stream + 1
                    yield self.log.decode_delivered(raw)
                    continue
                if status == "100":
                    continue  # idle heartbeat: the consumer and the server are there
                description = headers.get("Description", "")
                if status in ("404", "408") or (status == "409" and "Deleted" not in description):
                    break  # the request ended (expired, or a server-side limit): ask again
                if status == "400":
                    raise JetlaneError(f"JetStream refused a tail's pull: {description}")
                raise _Reset  # 503 (no such consumer), 409 Consumer Deleted, anything else

    def _explained(self, exc: JetlaneError) -> JetlaneError:
        """``exc``, or the permission violation the server reported on the connection
        (a refused publish is never answered: the request only times out)."""
        refused = self.log._errors.last
        if refused is None or isinstance(exc, _Refused):
            return exc
        return JetlaneError(f"NATS refused a tail of {self.subject}: {refused}")

    async def _delete(self) -> None:
        """Remove the consumer now, rather than ``INACTIVE`` seconds later (best effort)."""
        nc = self.log.nc
        if not self.name or not nc.is_connected:
            return
        subject = f"{self.log.api}.CONSUMER.DELETE.{self.stream}.{self.name}"
        with contextlib.suppress(Exception):  # the server also removes it when inactive
            await nc.request(subject, b"", timeout=1.0)


class _Refused(JetlaneError):
    """JetStream refused to create the consumer for a reason that will not pass."""
