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
import os
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog

from . import atoms, branches, children
from . import history as h
from .bounds import (
    VALUES_PER_ENTRY,
    bounded_error,
    cancelled_entry,
    error_info,
)
from .branches import _Request
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
from .definition import Job
from .determinism import ADVICE, ATOM_CALL, Diverged, Held, base_name
from .errors import (
    ConfigError,
    InputError,
    OrchestratorOnly,
    PayloadTooLarge,
    deliberate,
    describe,
)
from .recorded import Recorded

DEFAULT_MAX_PAYLOAD = 1024 * 1024 - 16 * 1024
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

    # Bodies kept in their own modules (``Replay`` methods all the same).
    changed = branches.changed
    _answer = branches._answer
    _decide = branches._decide
    _merged_park = branches._merged_park
    _hand_out = branches._hand_out
    _settle = branches._settle
    _schedule_turn = branches._schedule_turn
    _turn = branches._turn
    _live = branches._live
    _poke = branches._poke
    _wind_down = branches._wind_down
    _branch_enters = branches._branch_enters
    _check_by_id = branches._check_by_id
    _confirm = branches._confirm
    do = atoms.do
    _unrecordable = atoms._unrecordable
    _blocked_info = atoms._blocked_info
    _last_outcome = atoms._last_outcome
    _record = atoms._record
    sleep = atoms.sleep
    wait = atoms.wait
    wait_any = atoms.wait_any
    _wait = atoms._wait
    _opened = atoms._opened
    _event_for = atoms._event_for
    _waiting = atoms._waiting
    invoke = atoms.invoke
    _payload = atoms._payload
    _park = atoms._park

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
