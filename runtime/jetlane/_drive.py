"""The drive loop: bring a run from its replayed state to its next stable decision.

Design note. The replay core decides; this loop acts on its decisions over a
``Store`` (the NATS log in production, an in-memory store in
``jetlane.testing``): it writes the outbox (journal entries fenced on the
whole run, schedules), runs step functions through an ``execute`` callable,
and reads inputs that came while it held the run. The runner adds what is
its own around it (leases, deliveries, the parked-run cache, heartbeats);
the test kit adds a virtual clock. Both run this loop, so the tests of the
core exercise the code production runs.

Every append is fenced on the last sequence of the whole run, so a
successful append proves that no input came since the last read; a refused
one makes the loop read the tail (new inputs are taken in and the append
retried; a journal entry written by someone else ends the drive with
``FenceLost``). A cancel or pause that comes in this way is acted on before
the next step starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

from ._core import children
from ._core import history as h
from ._core.decisions import CancelChild, NotifyParent, StartChild
from ._core.errors import FenceLost, JetlaneError
from ._core.replay import (
    Append,
    Blocked,
    Checkpoint,
    Decision,
    Execute,
    Finished,
    Outcome,
    Park,
    Replay,
    Schedule,
    Unschedule,
    Waiting,
)


class Store(Protocol):
    """Where runs live: what the drive loop needs of the NATS log (or a test's memory)."""

    async def read(self, run_id: str, after: int = 0) -> list[h.Message]:
        """The run's inputs and journal after sequence ``after``, in order."""
        ...

    async def read_inputs(self, run_id: str, after: int = 0) -> list[h.Message]:
        """The run's inputs after sequence ``after``."""
        ...

    async def append(self, run_id: str, body: h.Journal, expected: int) -> int:
        """Append a journal entry if the run's last sequence is ``expected`` (else
        ``FenceLost``); its sequence."""
        ...

    async def send_schedule(
        self, run_id: str, token: str, fire_at: datetime, body: h.Timer
    ) -> asyncio.Future[Any]:
        """Arm (or replace) a durable timer; the future of its acknowledgement."""
        ...

    async def confirm(self, sent: asyncio.Future[Any]) -> None:
        """Wait for a ``send_schedule`` acknowledgement; raise what it refused."""
        ...

    async def unschedule(self, run_id: str, token: str) -> None:
        """Drop a timer (``"*"``: every timer of the run)."""
        ...

    async def create_once(self, run_id: str, body: h.Start) -> h.Start | None:
        """Store a run's start unless the run has one; None when stored, else the start
        the run already has (a child run: ours from before a crash, or another's)."""
        ...

    async def send_input(self, run_id: str, body: h.Input, msg_id: str) -> None:
        """Publish an input on a run's inbox, deduplicated by ``msg_id``."""
        ...


# How long after a fenced append (which proves no input came) the next step may start
# without reading the inbox first: the handler's code between two steps usually takes
# microseconds; past this, a cancel stored meanwhile must be read.
SYNC_WINDOW = 0.002


class Handback(Exception):
    """The driver is stopping: give the run back instead of starting another step."""


class Outdated(Exception):
    """An input came in, while a decision was being written, that overturns it (an
    event for a wait that was timing out): replay the run from its log again."""


Execute_ = Callable[[Replay, Execute], Awaitable[Outcome]]


class _InFlight:
    """The steps a drive is executing, and which have finished, in the order they did."""

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[Outcome]] = {}
        self.finished: deque[str] = deque()
        self._wake: asyncio.Future[None] | None = None

    def __bool__(self) -> bool:
        return bool(self.tasks)

    def start(self, step: str, attempt: Awaitable[Outcome]) -> None:
        task = asyncio.ensure_future(attempt)
        self.tasks[step] = task
        task.add_done_callback(lambda _: self._done(step))

    def _done(self, step: str) -> None:
        if step not in self.tasks:
            return  # abandoned (the drive ended and cancelled it)
        self.finished.append(step)
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def wake(self) -> asyncio.Future[None]:
        """A future done once a step in flight finishes."""
        if self._wake is None or self._wake.done():
            self._wake = asyncio.get_running_loop().create_future()
        return self._wake


class Driver:
    """Runs the drive loop over ``store``; ``execute`` runs one step attempt."""

    def __init__(
        self,
        store: Store,
        execute: Execute_,
        *,
        on_message: Callable[[Replay, h.Message], None] | None = None,
        on_append: Callable[[Replay, h.Journal, int], None] | None = None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.execute = execute
        self.on_message = on_message  # a message read and taken in
        self.on_append = on_append  # an entry we wrote
        self.stopping = stopping

    # -- reading ----------------------------------------------------------------

    def ingest(self, replay: Replay, msg: h.Message) -> None:
        if msg.direction == "out" and msg.seq <= replay.out_seq:
            return  # our own append, already applied
        replay.ingest(msg)
        if self.on_message is not None:
            self.on_message(replay, msg)

    async def ingest_tail(self, replay: Replay, *, journal: bool = False) -> bool:
        """Read what came after what the replay has seen; True when there was any.

        Only the inbox by default: the journal is ours while we hold the run (the
        fence catches anyone else at our next append). ``journal=True`` reads both
        and raises ``FenceLost`` when someone else wrote the journal.
        """
        if journal:
            tail = await self.store.read(replay.run_id, replay.last_seq)
            if any(m.direction == "out" and m.seq > replay.out_seq for m in tail):
                raise FenceLost("another runner wrote the journal")
        else:
            tail = await self.store.read_inputs(replay.run_id, replay.last_seq)
        for msg in tail:
            self.ingest(replay, msg)
        return bool(tail)

    # -- driving ----------------------------------------------------------------

    async def settle(
        self,
        replay: Replay,
        *,
        more: Callable[[], bool] = lambda: False,
        first_decision: Callable[[], None] | None = None,
    ) -> Decision:
        """Drive until the run ends, blocks, or parks with nothing new to read.

        ``more()`` tells of inputs the caller learned of by other means (a
        delivery that came while the run moved): the run is driven again.
        """
        while True:
            inputs = replay.inputs
            decision = await self.drive(replay, first_decision)
            first_decision = None
            if not isinstance(decision, Park):
                return decision
            # Park: read the log to its end first; an input may have come meanwhile.
            if replay.inputs > inputs or await self.ingest_tail(replay):
                continue
            if more():  # a delivery came: read what it brought before going on
                await self.ingest_tail(replay)
                continue
            return decision

    async def drive(
        self, replay: Replay, first_decision: Callable[[], None] | None = None
    ) -> Decision:
        """Execute steps (several at once for parallel branches) until the core's
        decision is neither a step to run nor a wait for one."""
        running = _InFlight()
        try:
            return await self._drive(replay, running, first_decision)
        finally:
            for task in running.tasks.values():
                task.cancel()  # a run that ended, blocked or failed: abandon the rest

    async def _drive(
        self,
        replay: Replay,
        running: _InFlight,
        first_decision: Callable[[], None] | None,
    ) -> Decision:
        reply: Any = None
        # When every input stored up to then was last known to be taken in: after a
        # fenced append (which the server refuses when an input came) or a read of the
        # inbox. Never at first: replaying the handler to its frontier takes time too.
        loop = asyncio.get_running_loop()
        synced_at = -math.inf
        while True:
            decision = await replay.next(reply)
            reply = None
            if first_decision is not None:
                first_decision()  # a full replay ends at the first decision: the frontier
                first_decision = None
            if await self.flush(replay):
                synced_at = loop.time()
            if isinstance(decision, Checkpoint):
                # The step's outcome is written; a cancel or pause it brought in is
                # acted on before the handler goes on past the step.
                if replay.cancel_pending:
                    return await self._cancelled(replay)
                if replay.paused:
                    if running:  # steps in flight finish (and are recorded) first
                        reply = await self._outcome(replay, running, or_changed=False)
                        continue
                    return Park(replay.current_step or "")  # resume goes on from here
                continue
            if isinstance(decision, Waiting):
                reply = await self._outcome(replay, running, or_changed=True)
                continue
            if not isinstance(decision, Execute):
                return decision
            if loop.time() - synced_at > SYNC_WINDOW:
                # No fenced append or read for a while (a step ran, the handler's own
                # code did, or the session's first read is old): read the run's tail, so
                # that a cancel or pause stored meanwhile is seen before the next step
                # starts, and so that a journal entry written meanwhile by a runner that
                # still thinks it holds the run (stopped past its lease, then resumed)
                # ends this session (FenceLost) before it runs a step that entry records.
                # The same one read as the inbox alone; steps started together share it.
                await self.ingest_tail(replay, journal=True)
                synced_at = loop.time()
            if replay.cancel_pending:
                return await self._cancelled(replay)
            if replay.paused:
                replay.hold(decision)
                continue
            if self.stopping():
                # Draining: finish the steps in flight, start no new one; another
                # runner continues from the log.
                replay.hold(decision)
                if not running:
                    raise Handback
                reply = await self._outcome(replay, running, or_changed=False)
                continue
            running.start(decision.step, self.execute(replay, decision))

    async def _outcome(
        self, replay: Replay, running: _InFlight, *, or_changed: bool
    ) -> Outcome | None:
        """The outcome of the first step in flight to finish (tagged with its step), or
        None when the handler asked something new first (``or_changed``)."""
        if not running and not or_changed:
            raise RuntimeError("the core waits for steps, but none is executing")
        if not running.finished:
            # Wait on one future, not on every task in flight: a wide fan-out would
            # otherwise cost a callback per task per outcome (quadratic).
            wake = running.wake()
            waits: set[asyncio.Future[Any]] = {wake}
            if or_changed:
                waits.add(replay.changed())
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if not running.finished:
            return None
        step = running.finished.popleft()
        task = running.tasks.pop(step)
        return dataclasses.replace(task.result(), step=step)

    async def _cancelled(self, replay: Replay) -> Decision:
        decision = await replay.next(None)  # the cancel ends the run
        await self.flush(replay)
        return decision

    async def flush(self, replay: Replay) -> bool:
        """Write the outbox; True when it appended anything (so the fence proved that
        every input stored before the last append has been taken in)."""
        outbox, replay.outbox = replay.outbox, []
        run_id = replay.run_id
        scheduled: list[asyncio.Future[Any]] = []
        try:
            for effect in outbox:
                if replay.cancel_pending:
                    # A cancel came in while appending: what the handler decided after
                    # the step in flight is not written; the cancel ends the run next.
                    break
                if isinstance(effect, Append):
                    # A cancel taken in while appending wins over an ending not yet written.
                    await self.append(replay, replay.cancel_wins(effect.body))
                elif isinstance(effect, Schedule):
                    # Pipelined with the timer_set append that follows; its ack is
                    # checked before the flush ends, so before the run parks (and a
                    # schedule lost anyway is re-armed by whoever finds the run parked).
                    scheduled.append(
                        await self.store.send_schedule(
                            run_id, effect.token, effect.fire_at, effect.body
                        )
                    )
                elif isinstance(effect, Unschedule):
                    await self.store.unschedule(run_id, effect.token)
                elif isinstance(effect, StartChild):
                    # The child's start is stored before child_started says so.
                    found = await self.store.create_once(effect.entry.run_id, effect.start)
                    entry = children.started_entry(effect, found)
                    replay.recorded.apply(entry)
                    await self.append(replay, entry)
                elif isinstance(effect, CancelChild):
                    cancel = h.Cancel(reason=effect.reason)
                    await self.store.send_input(effect.run_id, cancel, f"cancel:{effect.run_id}")
                elif isinstance(effect, NotifyParent) and replay.terminal is not None:
                    # Built from the terminal entry as written (a cancel may have won).
                    ended = children.ended_body(run_id, replay.terminal)
                    await self.store.send_input(effect.parent, ended, f"child-end:{run_id}")
        except BaseException:
            for sent in scheduled:
                sent.cancel()  # the drive is failing anyway; do not mask why
            raise
        for sent in scheduled:
            await self.store.confirm(sent)
        return any(isinstance(effect, Append | StartChild) for effect in outbox)

    async def append(self, replay: Replay, body: h.Journal) -> None:
        """Append, fenced on the whole run; new inputs are read in and the append retried."""
        empty = 0
        for _ in range(100):
            try:
                seq = await self.store.append(replay.run_id, body, replay.last_seq)
            except FenceLost as lost:
                # Something landed after what we read: a new input (take it in and
                # go on), or another runner's entry (ingest_tail raises FenceLost).
                if await self.ingest_tail(replay, journal=True):
                    if replay.outdated(body):
                        raise Outdated(
                            f"{h.kind_of(body)} of {getattr(body, 'step', '')!r}"
                        ) from None
                    empty = 0
                    continue
                empty += 1
                found = re.search(r"wrong last sequence: (\d+)", str(lost))
                if empty >= 3 and found:
                    # Reads keep finding nothing new: the message is on another
                    # subject under the run (not an input, not an entry). Step over it.
                    replay.last_seq = max(replay.last_seq, int(found.group(1)))
                continue
            replay.appended(seq)
            if self.on_append is not None:
                self.on_append(replay, body, seq)
            return
        raise JetlaneError("the run's inbox kept changing under 100 appends in a row")


__all__ = ["Blocked", "Driver", "Finished", "Handback", "Outdated", "Park", "Store"]
