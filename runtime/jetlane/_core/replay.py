"""The pure core: a run's history plus its job's handler give the next decision.

Design note. The handler is an ordinary coroutine run as an asyncio task on
the normal event loop (no sandbox, no home-made loop). Each step atom asks
this core what happened at its position in the history: a recorded outcome
is returned at once; at the *frontier* (no recorded outcome) the atom hands
a decision to the driver (``Execute`` a step function, ``Park`` on timers and
inputs, ``Finished``, ``Blocked``) and waits for the driver's reply. The core
never does I/O: it appends the journal entries it decides on to ``outbox``,
and the driver writes them (fenced) before it acts on the decision. Clock and
entropy are injected, so a test drives the core with a list of messages.

Because the handler task stays suspended at the frontier, a driver that
holds the run can ingest new inputs and call ``next`` again: it continues
where it stopped, with no replay (the cached-run fast path). A fresh core
fed the whole history reaches the same point by replay.

Matching is positional: the k-th atom the handler calls must be the k-th
step the journal records (same step id, same atom). Anything else is
non-determinism: the run is *blocked*, never failed, until compatible code
is deployed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import math
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import structlog

from . import children
from . import history as h
from .bounds import (
    VALUES_PER_ENTRY,
    bounded_error,
    cancelled_entry,
    error_info,
)
from .decisions import Append as Append
from .decisions import Blocked as Blocked
from .decisions import Checkpoint as Checkpoint
from .decisions import Decision as Decision
from .decisions import Effect as Effect
from .decisions import Execute as Execute
from .decisions import Finished as Finished
from .decisions import Outcome as Outcome
from .decisions import Park as Park
from .decisions import Schedule as Schedule
from .decisions import TimerSpec as TimerSpec
from .decisions import Unschedule as Unschedule
from .decisions import Waiting as Waiting
from .decisions import timer_token as timer_token
from .decisions import typed_result
from .definition import DEFAULT_RETRY, Job, RetryPolicy
from .determinism import ADVICE, ATOM_CALL, Diverged, Held, base_name
from .durations import format_time, parse_time
from .errors import (
    ConfigError,
    EventTimeout,
    InputError,
    NonRetryableError,
    OrchestratorOnly,
    PayloadTooLarge,
    StepFailed,
    deliberate,
    describe,
)
from .received import Event
from .recorded import UNRECORDABLE, Recorded

DEFAULT_MAX_PAYLOAD = 1024 * 1024 - 16 * 1024
# Loop iterations with nothing asked that make the handler's branches "quiet".
QUIET_ITERATIONS = 4
# An outcome recorded for a branch that no longer waits for it is not retried.
NO_RETRY = RetryPolicy(limit=0)


@dataclass
class _Request:
    """A branch's request: the decision for the driver, and the branch waiting on it."""

    decision: Decision
    future: asyncio.Future[Any]


current: contextvars.ContextVar[Replay] = contextvars.ContextVar("jetlane_replay")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Replay:
    """One run's replayed state and its handler, suspended at the frontier."""

    def __init__(
        self,
        job: Job,
        run_id: str,
        *,
        clock: Callable[[], datetime] = utcnow,
        entropy: Callable[[int], bytes] = os.urandom,
        plugins: Any = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        from .context import Context

        self.job = job
        self.run_id = run_id
        self.clock = clock
        self.entropy = entropy
        self.max_payload = max_payload
        self.outbox: list[Effect] = []
        self.recorded = Recorded()
        self.current_step: str | None = None
        self._value_pos = 0
        self._new_values: list[Any] = []
        self._armed: set[str] = set()
        self._swept = False
        self._told = False  # a child's end told to its parent (see children.after_end)
        self._occurrences: dict[str, int] = {}
        self._atoms = 0
        self._task: asyncio.Task[None] | None = None
        self._deadline: float | None = None
        # Requests of the handler's branches (the handler's own task and the tasks it
        # runs atoms in: asyncio.gather, TaskGroup), and what was handed to the driver.
        self._pending: deque[_Request] = deque()  # asked, not handed out yet
        self._executing: dict[str, _Request] = {}  # step -> Execute handed out
        self._checkpoints: list[_Request] = []  # outcomes written at the next flush
        self._parked: list[_Request] = []  # waiting for an input or the clock
        self._handed: Checkpoint | Park | None = None  # what a next(None) answers
        self._final: Decision | None = None  # how the handler ended, once it has
        self._changed: asyncio.Future[None] | None = None  # the handler asked something
        self._activity = 0  # counts the handler's requests, turns and branch ends
        self._woken = False  # an outcome was handed to its branch since the last settle
        self._drained: asyncio.Future[None] | None = None  # the end waits for steps
        # Parallel branches: who uses which step name, and replay in log order.
        self._owner: dict[str, asyncio.Task[Any]] = {}
        self._branches: set[asyncio.Task[Any]] = set()  # tasks other than the handler's
        self._concurrent = False  # a second task called an atom
        # A positional mismatch in the handler's own task, not yet a divergence: (step,
        # atom, the divergence it is unless a branch calls an atom first; see _confirm)
        self._suspect: tuple[str, str, Diverged] | None = None
        self._entered: set[str] = set()
        self._unconsumed: list[int] = []  # heap of recorded proceed sequences not yet used
        self._consumed: set[int] = set()
        self._turns: dict[int, asyncio.Future[None]] = {}  # proceed seq -> waiting branch
        # branches (by the step they are at) waiting for the replay's end
        self._gate: list[tuple[str, asyncio.Future[None]]] = []
        self._replayed = False  # the gate has opened: what branches do now is new
        # Waits of parallel branches that have started: step -> (order, types). An event
        # several of them could take goes to the one that started first.
        self._open_waits: dict[str, tuple[tuple[float, int], tuple[str, ...]]] = {}
        self._emitted = 0
        self._blocked: Blocked | None = None
        # The engine's unwinding of the handler (a divergence, a held step), kept so that
        # handler code that catches it (a bare ``except:``) cannot run on past it.
        self._unwinding: Diverged | Held | None = None
        self.log = structlog.get_logger("jetlane.run").bind(run_id=run_id, job=job.name)
        self.context = Context(self, plugins)

    # -- feeding the history ---------------------------------------------------

    def ingest(self, msg: h.Message) -> None:
        """Apply one message of the run's history (in stream order; duplicates ignored)."""
        self.recorded.ingest(msg)

    def appended(self, seq: int) -> None:
        """The driver wrote the next outbox entry; it now sits at ``seq``."""
        self.recorded.appended(seq)

    # What drivers read of the history.
    @property
    def last_seq(self) -> int:
        return self.recorded.last_seq

    @last_seq.setter
    def last_seq(self, seq: int) -> None:
        self.recorded.last_seq = seq

    @property
    def out_seq(self) -> int:
        return self.recorded.out_seq

    @property
    def inputs(self) -> int:
        return self.recorded.inputs

    @property
    def paused(self) -> bool:
        return self.recorded.paused

    @property
    def terminal(self) -> h.RunCompleted | h.RunFailed | h.RunCancelled | None:
        return self.recorded.terminal

    @property
    def start(self) -> h.Start | None:
        return self.recorded.start

    def _emit(self, body: h.Journal) -> None:
        self._record_values()
        self.recorded.apply(body)
        self.outbox.append(Append(body))

    def _record_values(self) -> None:
        new, self._new_values = self._new_values, []
        for at in range(0, len(new), VALUES_PER_ENTRY):
            # Chunked: a loop of ctx.uuid() calls must not make one entry too big to append.
            values = h.ValuesRecorded(values=new[at : at + VALUES_PER_ENTRY])
            self.recorded.apply(values)
            self.outbox.append(Append(values))

    def _schedule(self, step: str, purpose: str, attempt: int, fire_at: datetime) -> str:
        token = timer_token(step, purpose, attempt)
        self._armed.add(token)
        self.outbox.append(Schedule(token, fire_at, h.Timer(token, step, purpose)))
        return token

    # -- driving the handler ---------------------------------------------------

    @property
    def cancel_pending(self) -> bool:
        return self.recorded.cancel is not None and self.terminal is None

    async def next(self, reply: Any = None) -> Decision:
        """Answer the last decision and return the next one.

        ``reply`` is the ``Outcome`` of an ``Execute`` (several may be in flight:
        ``Outcome.step`` says which), or ``None``: a ``Checkpoint`` is written, a
        parked run has new inputs, an ``Execute`` was started, or (after
        ``Waiting``) the handler asked something new.

        A paused run (a ``pause`` input not yet followed by ``resume``) starts no
        step: its ``Execute``s wait, steps in flight finish, and a ``Park`` is
        returned until resumed. Pausing only changes *when* decisions happen, never
        *what* they are (those follow stream order), so replays agree with the live run.
        """
        if (
            self.paused
            and reply is None
            and self.terminal is None
            and self.recorded.cancel is None
            and self._blocked is None
        ):
            # Neither start nor resume the handler; steps in flight still report.
            return Waiting() if self._executing else self._paused_park()
        return await self._next(reply)

    def _paused_park(self) -> Park:
        return Park(self.current_step or "")

    def hold(self, decision: Execute) -> Park:
        """A pause came in after ``decision`` was handed out: it waits for ``resume``."""
        request = self._executing.pop(decision.step, None)
        if request is not None:
            self._pending.appendleft(request)
        return self._paused_park()

    def changed(self) -> asyncio.Future[None]:
        """A future that is done once the handler asks something new (for a driver
        waiting on steps in flight after ``Waiting``)."""
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    def cancel_wins(self, body: h.Journal) -> h.Journal:
        """``body`` to append, or the cancel that came in before this ending was written.

        The handler may have ended (completed or failed) while a cancel was being
        stored; the driver takes the cancel in when the fence refuses an append.
        A cancel stored before the run's end is written wins.
        """
        if self.recorded.cancel is None or not isinstance(body, h.RunCompleted | h.RunFailed):
            return body
        cancelled = cancelled_entry(*self.recorded.cancel)
        self.recorded.terminal = cancelled
        return cancelled

    def outdated(self, body: h.Journal) -> bool:
        """Whether an input taken in since ``body`` was decided contradicts it.

        Only a timeout can be (a wait's, an invoke's): it was decided because no event of its type
        was there, and one stored before the entry is written must win. (An event
        the wait took cannot be overtaken: later inputs come later in the log.)
        """
        if isinstance(body, h.ChildTimedOut):
            return body.run_id in self.recorded.child_ends  # the child's end wins
        if not isinstance(body, h.WaitTimedOut):
            return False
        types = tuple(body.types) if body.types is not None else (body.type,)
        return self.recorded.next_event(types) is not None

    def fired(self, token: str) -> bool:
        """Whether a timer input for ``token`` is in the inbox (it wakes; time decides)."""
        return self.recorded.fired(token)

    async def _next(self, reply: Any = None) -> Decision:
        if self.terminal is not None:
            if self.recorded.has_timers and not self._swept:
                # Found ended by a replay: the purge after the terminal entry may have
                # failed in the session that wrote it. Purging twice is harmless.
                self._swept = True
                self.outbox.append(Unschedule("*"))
            if not self._told:
                # Likewise the parent's notice and the children's cancels (idempotent).
                self._told = True
                self.outbox.extend(children.after_end(self))
            return Finished(self.terminal)
        if self.recorded.cancel is not None:
            return self._cancel_now(*self.recorded.cancel)
        if self._blocked is not None:
            # The handler is gone; asking again gets the same answer, not a crash.
            return self._blocked
        loop = asyncio.get_running_loop()
        if self._task is None:
            if self.start is None:
                raise RuntimeError(f"run {self.run_id} has no start message")
            size = len(msgspec.json.encode(self.start.input))
            if size > self.max_payload:
                # A raw publisher may send what the client refuses; never run with it.
                too_big = PayloadTooLarge(f"input is {size} bytes; {self._limit_text()}")
                return self._finish(h.RunFailed(error=error_info(too_big)))
            try:
                value = self.job.convert_input(self.start.input)
            except InputError as exc:
                if self.recorded.order:
                    # The history proves an earlier version took this input: the
                    # input type changed under a running run.
                    return self._block(
                        self.recorded.order[0], f"{exc}, but the history records steps" + ADVICE
                    )
                return self._finish(h.RunFailed(error=error_info(exc)))
            self._unconsumed = sorted(self.recorded.proceeds.values())
            ctx = contextvars.copy_context()
            ctx.run(current.set, self)
            self._deadline = loop.time() + self.job.timeout
            self._task = loop.create_task(self._main(value), context=ctx)
        else:
            self._answer(reply)
        if self._atoms == 0 and self._deadline is not None:
            # Function lane: until the first atom, the whole handler is one timed call.
            try:
                async with asyncio.timeout_at(self._deadline):
                    return await self._decide()
            except TimeoutError:
                if self._final is not None:
                    return self._final
                self.close()
                return self._finish(
                    h.RunFailed(
                        error=h.ErrorInfo(
                            type="FunctionTimeout",
                            message=(
                                f"job {self.job.name!r} ran {self.job.timeout:g}s without "
                                "calling a step atom; split long work into step.do(...) calls "
                                "(each checkpointed, retried and timed on its own) or raise "
                                "the limit with @job(..., timeout=...)"
                            ),
                        )
                    )
                )
        return await self._decide()

    def _answer(self, reply: Any) -> None:
        """Take the driver's reply to what was handed out."""
        if isinstance(reply, Outcome):
            request = self._executing.pop(reply.step, None)
            if request is None and not reply.step and len(self._executing) == 1:
                request = self._executing.pop(next(iter(self._executing)))
            if request is None:
                raise RuntimeError(f"an outcome for step {reply.step!r}, which is not executing")
            if not request.future.done():
                request.future.set_result(reply)
                self._woken = True  # its branch records the outcome before what comes next
            else:
                # Its branch was cancelled (a TaskGroup sibling failed): the effect
                # happened all the same, so the outcome is recorded honestly.
                assert isinstance(request.decision, Execute)
                self._record(request.decision.step, request.decision.attempt, reply, NO_RETRY)
            if not self._executing and self._drained is not None and not self._drained.done():
                self._drained.set_result(None)
            return
        if reply is not None:
            raise RuntimeError(f"next() takes an Outcome or None, not {reply!r}")
        handed, self._handed = self._handed, None
        if isinstance(handed, Checkpoint):
            released, self._checkpoints = self._checkpoints, []
        elif isinstance(handed, Park):
            # In a fixed order (by step), so that branches woken together act in the
            # same order live and on replay.
            released, self._parked = self._parked, []
            released.sort(key=lambda r: getattr(r.decision, "step", ""))
        else:
            return  # an Execute was started, or the handler may have asked something
        for request in released:
            if not request.future.done():
                request.future.set_result(None)

    async def _decide(self) -> Decision:
        """Let the handler run until it asks something the driver must act on."""
        while True:
            if (
                not self._concurrent
                and self._executing
                and not self._pending
                and not self._woken
                and self._final is None
                and not (self._turns or self._unconsumed or self._gate)
            ):
                # One branch, its step running: wait for its outcome (or a new request:
                # the driver also waits on changed()). No need to let the handler settle.
                # (Parallel branches settle first, so steps start in the same order.)
                return Waiting()
            await self._settle()
            if self._final is not None and not self._executing:
                return self._final
            if self._pending:
                decision = self._hand_out()
                if decision is not None:
                    return decision
                continue
            if self.paused and not self._executing:
                # Held: nothing new is decided (a branch could take an event, or leave
                # a replay's gate) until a resume; steps in flight have reported.
                return self._paused_park()
            if (self._turns or self._unconsumed or self._gate) and self._schedule_turn():
                continue
            if self._executing:
                return Waiting()
            self._parked = [r for r in self._parked if not r.future.done()]  # cancelled
            if self._parked:
                self._handed = park = self._merged_park()
                return park
            if self._final is not None:
                return self._final
            # Nothing asked: the handler's code awaits something else (I/O in the
            # function lane, before its first atom): wait for its next request or end.
            await self.changed()

    def _merged_park(self) -> Park:
        """One ``Park`` for every parked branch: all their timers, named after the step
        whose timer comes first (the same live and on replay, whatever order they parked)."""
        parks = [r.decision for r in self._parked if isinstance(r.decision, Park)]
        timers = tuple(t for p in parks for t in p.timers)
        late = datetime.max.replace(tzinfo=UTC)
        first = min(parks, key=lambda p: (min((t.fire_at for t in p.timers), default=late), p.step))
        return Park(first.step, timers)

    def _hand_out(self) -> Decision | None:
        """The next pending request as a decision (None: it was dealt with here)."""
        request = self._pending[0]
        decision = request.decision
        if request.future.done():
            self._pending.popleft()  # its branch was cancelled before it was handed out
            return None
        if isinstance(decision, Execute):
            if self.paused or len(self._executing) >= self.job.max_parallel:
                if self._executing:
                    return Waiting()
                return self._paused_park()
            self._pending.popleft()
            self._executing[decision.step] = request
            return decision
        self._pending.popleft()
        if isinstance(decision, Checkpoint):
            self._checkpoints.append(request)
            while self._pending and isinstance(self._pending[0].decision, Checkpoint):
                self._checkpoints.append(self._pending.popleft())
            self._handed = decision
            return decision
        self._parked.append(request)  # a Park: given out once nothing else is to do
        return None

    async def _settle(self) -> None:
        """Yield to the handler's tasks until they have asked something, or are quiet.

        Branches run as ordinary asyncio tasks; a branch woken by an answer runs within
        a loop iteration or two (one more per task it wakes in turn: gather, TaskGroup).
        Quiet means a few iterations in a row with no request, turn or branch end.
        """
        # A branch just handed a step's outcome runs first: it records the outcome and
        # asks its next request, so that the entry is in the outbox before the decision
        # (another step started, or a Park that a paused run returns) is acted on.
        woken, self._woken = self._woken, False
        if self._pending and not woken:
            return
        start = self._activity
        idle = 0
        while idle < QUIET_ITERATIONS:
            before = self._activity
            await asyncio.sleep(0)
            if self._pending and (not woken or self._activity != start):
                return
            idle = idle + 1 if self._activity == before else 0

    def _schedule_turn(self) -> bool:
        """Replay of parallel branches, in log order: hand the earliest recorded outcome
        to the branch that waits for it, or pass over one that no branch will take
        (its branch was cancelled); once none is left, let the live run begin.
        True when something moved."""
        while self._unconsumed and self._unconsumed[0] in self._consumed:
            heapq.heappop(self._unconsumed)
        if self._unconsumed:
            seq = heapq.heappop(self._unconsumed)
            self._consumed.add(seq)
            waiter = self._turns.pop(seq, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return True
        moved = False
        for seq, waiter in list(self._turns.items()):  # recorded, but taken out of order
            del self._turns[seq]
            if not waiter.done():
                waiter.set_result(None)
                moved = True
        self._replayed = True
        gate, self._gate = self._gate, []
        for _, waiter in sorted(gate, key=lambda g: g[0]):  # in a fixed order: by step
            if not waiter.done():
                waiter.set_result(None)
                moved = True
        return moved

    async def _turn(self, step: str) -> None:
        """Before a branch goes past ``step`` on a recorded outcome: wait until every
        outcome recorded before it has been handed out (parallel branches only)."""
        await self._confirm(step)
        seq = self.recorded.proceeds.get(step)
        if seq is None or seq in self._consumed:
            return
        if not self._concurrent or (self._unconsumed and self._unconsumed[0] == seq):
            self._consumed.add(seq)
            return
        waiter = asyncio.get_running_loop().create_future()
        self._turns[seq] = waiter
        self._poke()
        await waiter

    async def _live(self, step: str) -> None:
        """Before a branch does something new (runs a step, writes an entry): wait
        until every recorded outcome has been handed out (parallel branches only)."""
        await self._confirm(step)
        if not self._concurrent or self._replayed:
            return
        # The first time, every branch waits here until the handler is quiet and every
        # recorded outcome handed out; then all go on together, in a fixed order.
        waiter = asyncio.get_running_loop().create_future()
        self._gate.append((step, waiter))
        self._poke()
        await waiter

    def _poke(self) -> None:
        self._activity += 1
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    def close(self) -> None:
        """Drop the suspended handler and its branches (eviction, cancel, fence lost)."""
        for task in self._branches:
            if not task.done():
                task.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def aclose(self) -> None:
        """``close``, and wait until the handler task has ended."""
        self.close()
        for task in [*self._branches, *([self._task] if self._task is not None else [])]:
            with contextlib.suppress(BaseException):  # an unwinding a branch ended with
                await task

    async def _main(self, value: Any) -> None:
        handler = self.job.handler
        output: Any = None
        raised: BaseException | None = None
        try:
            if self.job.takes_input:
                output = await handler(self.context, value)
            else:
                output = await handler(self.context)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # close(): the driver dropped the handler
            raised = exc
        except GeneratorExit:
            raise  # the suspended handler is garbage-collected: no decision to make
        except BaseException as exc:
            # Exception, and also SystemExit/KeyboardInterrupt raised by handler code:
            # the run must get a decision, or its session would wait forever.
            raised = exc
        await self._wind_down()
        self._final = self._ending(output, raised)
        self._poke()

    async def _wind_down(self) -> None:
        """The handler has ended: branches still running are cancelled (structured
        concurrency), and steps in flight finish and are recorded before the end is."""
        running = [t for t in self._branches if not t.done()]
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)
        if self._executing:
            self._drained = asyncio.get_running_loop().create_future()
            self._poke()
            await self._drained

    def _ending(self, output: Any, raised: BaseException | None) -> Decision:
        """The decision for a handler that returned ``output`` or raised ``raised``."""
        if isinstance(raised, Diverged | Held):
            return self._stopped(raised)
        if self._unwinding is not None:
            # The handler caught the engine's unwinding (``except BaseException``) and
            # went on: the run stops where it was stopped, not past it.
            return self._stopped(self._unwinding)
        missing = self._missing_step()
        if raised is not None:
            if isinstance(raised, asyncio.CancelledError):
                exc: BaseException = asyncio.CancelledError("the handler raised CancelledError")
                return self._finish(h.RunFailed(error=error_info(exc)))
            if missing is not None:
                # Deterministic code cannot raise where it once went on: the code changed.
                text = f"raised {type(raised).__name__}: {raised}"
                return self._diverged(text, error_info(raised).traceback)
            if deliberate(raised, self.job.fail_on):
                return self._finish(h.RunFailed(error=error_info(raised)))
            # A bug in handler code: the run keeps its place and waits for a fix.
            return self._block_on_error(raised)
        if missing is not None:
            return self._diverged("returned")
        try:
            raw = msgspec.json.encode(output)
        except (TypeError, ValueError) as exc:
            # The code is wrong, not the run: a fix that converts the value finishes it.
            message = (
                f"the handler returned a {type(output).__name__} jetlane cannot record: {exc}; "
                "return JSON-shaped data (dict, list, str, numbers, msgspec Structs, "
                "dataclasses) and deploy the fix: the run resumes"
            )
            return self._block_with(bounded_error("OutputError", message))
        if len(raw) > self.max_payload:
            info = error_info(PayloadTooLarge(f"output is {len(raw)} bytes; {self._limit_text()}"))
            return self._finish(h.RunFailed(error=info))
        return self._finish(h.RunCompleted(output=msgspec.Raw(raw)))

    def _missing_step(self) -> str | None:
        """A step the history records that this handler never reached, if any."""
        if not self._concurrent:
            if self._atoms < len(self.recorded.order):
                return self.recorded.order[self._atoms]
            return None
        return next((s for s in self.recorded.order if s not in self._entered), None)

    async def _request(self, decision: Decision) -> Any:
        """Hand ``decision`` to the driver (in turn with other branches); its answer."""
        if current.get(None) is not self:
            raise ConfigError(
                "step atoms run in the handler and its branches, not inside step functions"
            )
        request = _Request(decision, asyncio.get_running_loop().create_future())
        self._pending.append(request)
        self._poke()
        return await request.future

    def _finish(self, entry: h.RunCompleted | h.RunFailed | h.RunCancelled) -> Finished:
        self._emit(entry)
        if self.recorded.has_timers:
            self._swept = True
            self.outbox.append(Unschedule("*"))
        self._told = True
        self.outbox.extend(children.after_end(self))
        return Finished(entry)

    def _cancel_now(self, seq: int, cancel: h.Cancel) -> Finished:
        self.close()
        return self._finish(cancelled_entry(seq, cancel))

    def _stopped(self, stop: Diverged | Held) -> Blocked:
        if isinstance(stop, Held):
            return self._block_with(stop.info, stop.step)
        return self._block(stop.step, stop.message)

    def _unwind(self, stop: Diverged | Held) -> Diverged | Held:
        """``stop``, remembered: raise what this returns to unwind the handler."""
        if self._unwinding is None:
            self._unwinding = stop
        return self._unwinding

    def _diverged(self, what: str, trace: list[h.Frame] | None = None) -> Blocked:
        """The handler ended (``what``; where: ``trace``) before the steps the history
        records."""
        step = self._missing_step() or self.recorded.order[-1]
        return self._block(
            step,
            f"the handler {what}, but the history records "
            f"{ATOM_CALL[self.recorded.steps[step].atom]}({base_name(step)!r}) as step "
            f"#{self.recorded.order.index(step) + 1} ({step!r})" + ADVICE,
            trace,
        )

    def _block(self, step: str, message: str, trace: list[h.Frame] | None = None) -> Blocked:
        info = bounded_error("NonDeterminismError", message, trace)
        entry = h.RunBlocked(step=step, error=info)
        # Values read by code that does not match the history must not be
        # replayed into the compatible code that resumes the run.
        self._new_values = []
        last = self.recorded.last_entry
        if not (
            isinstance(last, h.RunBlocked) and last.step == step and last.error.type == info.type
        ):
            # One entry per distinct block: the message may vary between attempts
            # (it quotes values), and a blocked run must not grow its journal forever.
            self._emit(entry)
        self._blocked = Blocked(step, info)
        return self._blocked

    def _block_on_error(self, exc: BaseException) -> Blocked:
        """Handler code raised ``exc`` outside the atoms, not on purpose: block."""
        where = (
            f"after step {self.current_step!r}"
            if self.current_step is not None
            else "before its first step"
        )
        type_, message = describe(exc)
        info = error_info(exc)
        text = (
            f"handler code raised {type_}: {message} ({where}); the run waits for a fix: "
            "deploy fixed code and it resumes from here. To fail the run on purpose raise "
            "jetlane.Failure, or list the type in @job(fail_on=...)"
        )
        return self._block_with(bounded_error(type_, text, info.traceback))

    def _block_with(self, info: h.ErrorInfo, step: str | None = None) -> Blocked:
        """Block on a bug in the code (not a divergence) at ``step`` (default: the last)."""
        step = step or self.current_step or "(start)"
        self._new_values = []  # made by code that is about to change
        last = self.recorded.last_entry
        if not (
            isinstance(last, h.RunBlocked) and last.step == step and last.error.type == info.type
        ):
            self._emit(h.RunBlocked(step=step, error=info))
        self._blocked = Blocked(step, info)
        return self._blocked

    def _limit_text(self) -> str:
        return (
            f"the limit is {self.max_payload} bytes; keep large data outside the run "
            "and pass a reference"
        )

    # -- what the atoms call ---------------------------------------------------

    def enter(self, name: str, atom: str) -> str:
        """The step id of the next atom; blocks the run when it diverges from history."""
        if self._unwinding is not None:
            raise self._unwinding  # the handler caught it and went on: no further atom
        if not isinstance(name, str) or not name or "#" in name or len(name) > 256:
            raise ConfigError(f"step name {name!r} is invalid: 1-256 characters, no '#'")
        self._branch_enters(name)
        count = self._occurrences.get(name, 0) + 1
        self._occurrences[name] = count
        step = name if count == 1 else f"{name}#{count}"
        index = self._atoms
        self._atoms += 1
        self._entered.add(step)
        if self._concurrent:
            # Branches interleave differently live and on replay, so positions say
            # nothing: a step is checked by its id (and the end, for steps never reached).
            self._check_by_id(step, atom)
        elif index < len(self.recorded.order):
            recorded = self.recorded.order[index]
            rec_atom = self.recorded.steps[recorded].atom
            if (recorded, rec_atom) != (step, atom):
                stop = Diverged(
                    step,
                    f"step #{index + 1} is recorded as {ATOM_CALL[rec_atom]}"
                    f"({base_name(recorded)!r}) (step id {recorded!r}), but the code now calls "
                    f"{ATOM_CALL[atom]}({name!r}) (step id {step!r})" + ADVICE,
                )
                # The handler may have created a task (asyncio.create_task) that has not
                # run yet: live, its step was recorded first. Decided in ``_confirm``, once
                # such branches have had the chance to call their atoms.
                self._suspect = (step, atom, stop)
        elif (held := self.recorded.held_at_frontier()) is not None and (held, "do") != (
            step,
            atom,
        ):
            # A held step has no outcome recorded, so positions alone would let code
            # that renamed it run its effect again with no resume.
            raise self._unwind(
                Diverged(
                    held,
                    f"step #{index + 1} is step.do({base_name(held)!r}) (step id {held!r}), "
                    "held because its result could not be recorded (its effect happened), but "
                    f"the code now calls {ATOM_CALL[atom]}({name!r}) (step id {step!r}) there. "
                    "Keep the held step's name, or resume the run (jetlane resume RUN_ID) to "
                    "let the code go on without it",
                )
            )
        self.current_step = step
        return step

    def _check_by_id(self, step: str, atom: str) -> None:
        recorded_step = self.recorded.steps.get(step)
        if recorded_step is not None and recorded_step.atom != atom:
            raise self._unwind(
                Diverged(
                    step,
                    f"step {step!r} is recorded as {ATOM_CALL[recorded_step.atom]}"
                    f"({base_name(step)!r}), but the code now calls {ATOM_CALL[atom]}"
                    f"({base_name(step)!r})" + ADVICE,
                )
            )

    async def _confirm(self, step: str) -> None:
        """A positional mismatch at ``step`` (see ``enter``) is a divergence unless a
        branch of the handler calls an atom meanwhile: then steps are matched by id."""
        suspect = self._suspect
        if suspect is None or suspect[0] != step:
            return
        self._suspect = None
        for _ in range(QUIET_ITERATIONS):
            if self._concurrent:
                break
            self._poke()  # not quiet: the handler is still deciding
            await asyncio.sleep(0)
        if not self._concurrent:
            raise self._unwind(suspect[2])
        self._check_by_id(step, suspect[1])

    def _branch_enters(self, name: str) -> None:
        """Note which task uses step name ``name``: one name, one branch."""
        task = asyncio.current_task()
        assert task is not None
        if task is not self._task and task not in self._branches:
            self._branches.add(task)
            self._concurrent = True
            task.add_done_callback(lambda _: self._poke())
        owner = self._owner.get(name)
        if owner is None or owner.done():
            self._owner[name] = task
        elif owner is not task:
            raise ConfigError(
                f"step name {name!r} is used by two parallel branches; steps of parallel "
                f"branches need names of their own, e.g. f'{name}:{{item}}'"
            )

    def value(self, make: Callable[[], Any], parse: Callable[[Any], Any], call: str) -> Any:
        """A recorded value (``ctx.now/uuid/random``): made once, replayed after.

        ``parse`` turns the recorded JSON value back into what ``call`` returns; a
        recorded value it cannot parse was made by another call, so the code changed.
        """
        if current.get(None) is not self:
            raise OrchestratorOnly(
                f"{call} was called inside a step function; it is an orchestrator call "
                "(its value is recorded in the journal): call it in the handler and pass "
                "the value into the step, e.g. key = ctx.uuid(); "
                "await step.do('charge', lambda: charge(key))"
            )
        if asyncio.current_task() is not self._task:
            raise ConfigError(
                f"{call} was called in a parallel branch; recorded values are matched by "
                "call order, which parallel branches do not keep: take them in the handler "
                "before the branches start and pass them in"
            )
        index = self._value_pos
        if index < len(self.recorded.values):
            recorded = self.recorded.values[index]
        else:
            recorded = make()
            self._new_values.append(recorded)
        self._value_pos += 1
        try:
            return parse(recorded)
        except (TypeError, ValueError):
            step = self.current_step or (
                self.recorded.order[0] if self.recorded.order else "(start)"
            )
            raise self._unwind(
                Diverged(
                    step,
                    f"recorded value #{index + 1} is {recorded!r}, which {call} did not make; "
                    "ctx.now()/uuid()/random() are matched by call order" + ADVICE,
                )
            ) from None

    def now(self) -> datetime:
        return self.clock()

    async def do(
        self,
        name: str,
        fn: Callable[[], Any],
        retries: RetryPolicy | None,
        timeout: float | None,
    ) -> Any:
        step = self.enter(name, "do")
        policy = DEFAULT_RETRY if retries is None else retries
        while True:
            last = self._last_outcome(step)
            attempt = 1
            if isinstance(last, h.StepCompleted):
                await self._turn(step)
                return typed_result(last.result, fn)
            if isinstance(last, h.StepFailed) and last.retry_at is None:
                await self._turn(step)
                raise StepFailed(step, last.attempt, last.error.type, last.error.message)
            await self._live(step)
            if isinstance(last, h.StepFailed) and last.retry_at is not None:
                token = timer_token(step, "retry", last.attempt)
                retry_at = parse_time(last.retry_at)
                if self.clock() < retry_at:
                    # Only time ends the wait: a timer input (fired, forged or orphaned
                    # by a crash) just wakes the run to look at the clock.
                    await self._park(step, token, retry_at, h.Timer(token, step, "retry"))
                    continue
                attempt = last.attempt + 1
            self.current_step = step
            if self.recorded.holds(step):
                # Its effect happened and its result was not recordable: run it again
                # only when an operator says so (a resume), never on a mere replay.
                raise self._unwind(Held(step, self._unrecordable(step, None)))
            # Values the handler took (ctx.uuid() for an idempotency key, ...) are
            # durable before a step that may have been handed them starts.
            self._record_values()
            outcome: Outcome = await self._request(Execute(step, attempt, fn, timeout))
            self._record(step, attempt, outcome, policy)
            await self._request(Checkpoint())
            if self.recorded.holds(step):
                raise self._unwind(Held(step, self._blocked_info(step)))

    def _unrecordable(
        self, step: str, result: Any, exc: BaseException | None = None
    ) -> h.ErrorInfo:
        if exc is None:
            return self._blocked_info(step)
        message = (
            f"step {step!r} returned a {type(result).__name__}, which jetlane cannot record "
            f"({exc}). Its effect happened, so the run is held here rather than failed or "
            "retried: make the step function return JSON-shaped data (e.g. response.json() "
            "instead of the response), deploy the fix, then resume the run "
            "(jetlane resume RUN_ID) to run the step again"
        )
        return bounded_error(UNRECORDABLE, message)

    def _blocked_info(self, step: str) -> h.ErrorInfo:
        """The error of the run_blocked that holds ``step``."""
        last = self.recorded.last_entry
        if isinstance(last, h.RunBlocked) and last.step == step:
            return last.error
        message = f"step {step!r} is held on a result that could not be recorded"
        return bounded_error(UNRECORDABLE, message + "; resume the run to run it again")

    def _last_outcome(self, step: str) -> Any:
        return self.recorded.last_outcome(step)

    def _record(self, step: str, attempt: int, outcome: Outcome, policy: RetryPolicy) -> None:
        error = outcome.error
        if error is None:
            try:
                raw = msgspec.json.encode(outcome.result)
            except (TypeError, ValueError) as exc:
                # The step's effect happened; failing it would lose that, retrying it would
                # repeat it. Hold the run here until a fix and a resume (see ``do``).
                info = self._unrecordable(step, outcome.result, exc)
                self._emit(h.RunBlocked(step=step, error=info))
                return
            else:
                if len(raw) > self.max_payload:
                    error = PayloadTooLarge(
                        f"step {step!r} returned {len(raw)} bytes; {self._limit_text()}"
                    )
                else:
                    self._emit(
                        h.StepCompleted(
                            step=step,
                            attempt=attempt,
                            result=msgspec.Raw(raw),
                            started_at=format_time(outcome.started_at),
                            duration_ms=round(outcome.duration_ms, 3),
                        )
                    )
                    return
        final = isinstance(error, NonRetryableError | PayloadTooLarge)
        delay = None if final else policy.delay_after(attempt)
        info = error_info(error)
        if delay is None:
            self._emit(h.StepFailed(step=step, attempt=attempt, error=info, retry_at=None))
            return
        fire_at = self.clock() + timedelta(seconds=delay)
        token = self._schedule(step, "retry", attempt, fire_at)
        at = format_time(fire_at)
        self._emit(h.StepFailed(step=step, attempt=attempt, error=info, retry_at=at))
        self._emit(h.TimerSet(step=step, timer=token, fire_at=at, purpose="retry"))

    async def sleep(self, name: str, seconds: float | None, until: datetime | None) -> None:
        step = self.enter(name, "sleep")
        token = timer_token(step, "sleep", 1)
        while True:
            entries = self.recorded.entries(step)
            if any(isinstance(e, h.SleepCompleted) for e in entries):
                await self._turn(step)
                return
            await self._live(step)
            timer_set = next((e for e in entries if isinstance(e, h.TimerSet)), None)
            if timer_set is None:
                now = self.clock()
                fire_at = until if until is not None else now + timedelta(seconds=seconds or 0)
                if fire_at <= now:
                    self._emit(h.SleepCompleted(step=step, input_seq=None))
                    return
                self._schedule(step, "sleep", 1, fire_at)
                at = format_time(fire_at)
                self._emit(h.TimerSet(step=step, timer=token, fire_at=at, purpose="sleep"))
            else:
                fire_at = parse_time(timer_set.fire_at)
            if self.clock() >= fire_at:
                # Ended by time, not by a message: an inbox publisher cannot forge it.
                self._emit(h.SleepCompleted(step=step, input_seq=None))
                return
            await self._park(step, token, fire_at, h.Timer(token, step, "sleep"))

    async def wait(self, name: str, type: str, timeout: float) -> Any:
        step, seq = await self._wait(name, (type,), timeout, any_of=False)
        return self._payload(step, seq)

    async def wait_any(self, name: str, types: tuple[str, ...], timeout: float) -> Event:
        step, seq = await self._wait(name, types, timeout, any_of=True)
        event = self.recorded.event_at[seq]
        return Event(type=event.type, payload=self._payload(step, seq), seq=seq)

    async def _wait(
        self, name: str, types: tuple[str, ...], timeout: float, *, any_of: bool
    ) -> tuple[str, int]:
        """Park until an event of one of ``types``: its step id and input sequence."""
        step = self.enter(name, "wait_any" if any_of else "wait")
        try:
            return await self._waiting(step, types, timeout, any_of)
        finally:
            self._open_waits.pop(step, None)

    def _opened(self, step: str, types: tuple[str, ...]) -> None:
        """Note that ``step``'s wait has started (its wait_started is recorded)."""
        if step in self._open_waits:
            return
        seq = self.recorded.wait_started_at.get(step)
        if seq is not None:
            key: tuple[float, int] = (seq, 0)
        else:  # written in this session: after everything read, in the order written
            self._emitted += 1
            key = (self.recorded.last_seq + 0.5, self._emitted)
        self._open_waits[step] = (key, types)

    def _event_for(self, step: str, types: tuple[str, ...]) -> int | None:
        """The event this wait takes: the earliest of its types that no wait started
        before it (in another branch) takes first; the same live and on replay."""
        if not self._open_waits or list(self._open_waits) == [step]:
            return self.recorded.next_event(types)
        waits = sorted((key, s, t) for s, (key, t) in self._open_waits.items())
        if step not in self._open_waits:
            waits.append(((math.inf, 0), step, types))  # starting now: after the others
        taken: set[int] = set()
        for _, other, wanted in waits:
            seq = next(
                (
                    q
                    for q, e in self.recorded.events
                    if e.type in wanted and q not in self.recorded.consumed and q not in taken
                ),
                None,
            )
            if other == step:
                return seq
            if seq is not None:
                taken.add(seq)
        return None

    async def _waiting(
        self, step: str, types: tuple[str, ...], timeout: float, any_of: bool
    ) -> tuple[str, int]:
        token = timer_token(step, "wait_timeout", 1)
        marked = list(types) if any_of else None  # what marks a wait_for_any on the wire
        while True:
            entries = self.recorded.entries(step)
            started: h.WaitStarted | None = None
            for entry in entries:
                if isinstance(entry, h.EventReceived):
                    await self._turn(step)
                    return step, entry.input_seq
                if isinstance(entry, h.WaitTimedOut):
                    await self._turn(step)
                    raise EventTimeout(step, types[0], types if any_of else None)
                if isinstance(entry, h.WaitStarted):
                    started = entry
                    self._opened(step, types)
            await self._live(step)
            event_seq = self._event_for(step, types)
            if event_seq is not None:
                # An event stored before the runner decides wins, even at the deadline.
                taken = self.recorded.event_at[event_seq].type
                self._emit(
                    h.EventReceived(step=step, type=taken, input_seq=event_seq, types=marked)
                )
                if started is not None:
                    self.outbox.append(Unschedule(token))
                return step, event_seq
            if started is not None and self.clock() >= parse_time(started.timeout_at):
                self._emit(h.WaitTimedOut(step=step, type=types[0], input_seq=None, types=marked))
                raise EventTimeout(step, types[0], types if any_of else None)
            if started is None:
                timeout_at = self.clock() + timedelta(seconds=timeout)
                self._schedule(step, "wait_timeout", 1, timeout_at)
                at = format_time(timeout_at)
                self._emit(h.WaitStarted(step=step, type=types[0], timeout_at=at, types=marked))
                self._opened(step, types)
                self._emit(h.TimerSet(step=step, timer=token, fire_at=at, purpose="wait_timeout"))
                fire_at = timeout_at
            else:
                fire_at = parse_time(started.timeout_at)
            await self._park(step, token, fire_at, h.Timer(token, step, "wait_timeout"))

    async def invoke(
        self,
        name: str,
        job: str,
        input: Any,
        run_id: str | None,
        timeout: float | None,
        *,
        detached: bool = False,
    ) -> Any:
        """``step.invoke`` / ``step.start_run``: see ``children``."""
        return await children.invoke(self, name, job, input, run_id, timeout, detached=detached)

    def _payload(self, step: str, seq: int) -> Any:
        """The payload of the event a wait took; one over the size limit fails the step."""
        payload = self.recorded.event_at[seq].payload
        size = len(msgspec.json.encode(payload))
        if size > self.max_payload:
            # Decided from the log alone, so a replay raises the same error again.
            message = f"event payload for step {step!r} is {size} bytes; {self._limit_text()}"
            raise StepFailed(step, 1, "PayloadTooLarge", message)
        return payload

    async def _park(self, step: str, token: str, fire_at: datetime, body: h.Timer) -> None:
        rearm = token not in self._armed
        self._armed.add(token)
        await self._request(Park(step, (TimerSpec(token, fire_at, body, rearm),)))
