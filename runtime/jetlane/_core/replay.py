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
from collections.abc import Callable
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
        self._held: Execute | None = None
        self._armed: set[str] = set()
        self._swept = False
        self._told = False  # a child's end told to its parent (see children.after_end)
        self._occurrences: dict[str, int] = {}
        self._atoms = 0
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[Decision] | None = None
        self._reply: asyncio.Future[Any] | None = None
        self._deadline: float | None = None
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
        """Resume the handler (answering the last decision) until its next decision.

        A paused run (a ``pause`` input not yet followed by ``resume``) starts no
        step: the next ``Execute`` is held and a ``Park`` returned until resumed.
        Pausing only changes *when* decisions happen, never *what* they are (those
        follow stream order), so replays agree with the live run.
        """
        if self.terminal is None and self.recorded.cancel is None and self._blocked is None:
            if self._held is not None:
                if self.paused:
                    return self._paused_park()
                held, self._held = self._held, None
                return held
            if self.paused and reply is None:
                return self._paused_park()  # do not start or resume the handler
        decision = await self._next(reply)
        if isinstance(decision, Execute) and self.paused:
            self._held = decision
            return self._paused_park()
        return decision

    def _paused_park(self) -> Park:
        return Park(self.current_step or "")

    def hold(self, decision: Execute) -> Park:
        """A pause came in after ``decision`` was made: keep it for ``resume``."""
        self._held = decision
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
        wake: asyncio.Future[Decision] = loop.create_future()
        self._wake = wake
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
            ctx = contextvars.copy_context()
            ctx.run(current.set, self)
            self._deadline = loop.time() + self.job.timeout
            self._task = loop.create_task(self._main(value), context=ctx)
        elif self._reply is not None:
            pending, self._reply = self._reply, None
            pending.set_result(reply)
        else:
            raise RuntimeError("next() called with no decision outstanding")
        if self._atoms == 0 and self._deadline is not None:
            # Function lane: until the first atom, the whole handler is one timed call.
            try:
                async with asyncio.timeout_at(self._deadline):
                    return await asyncio.shield(wake)
            except TimeoutError:
                if wake.done():
                    return wake.result()
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
        return await wake

    def close(self) -> None:
        """Drop the suspended handler (eviction, cancel, fence lost)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def aclose(self) -> None:
        """``close``, and wait until the handler task has ended."""
        self.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _main(self, value: Any) -> None:
        handler = self.job.handler
        try:
            if self.job.takes_input:
                output = await handler(self.context, value)
            else:
                output = await handler(self.context)
        except (Diverged, Held) as stop:
            self._wake_with(self._stopped(stop))
            return
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # close(): the driver dropped the handler
            if self._unwinding is not None:
                self._wake_with(self._stopped(self._unwinding))
                return
            exc = asyncio.CancelledError("the handler raised CancelledError")
            self._wake_with(self._finish(h.RunFailed(error=error_info(exc))))
            return
        except BaseException as exc:
            # Exception, and also SystemExit/KeyboardInterrupt raised by handler code:
            # the run must get a decision, or its session would wait forever.
            if self._unwinding is not None:
                # The handler caught the engine's unwinding and raised something else.
                self._wake_with(self._stopped(self._unwinding))
                return
            if self._atoms < len(self.recorded.order):
                # Deterministic code cannot raise where it once went on: the code changed.
                raised = f"raised {type(exc).__name__}: {exc}"
                self._wake_with(self._diverged(raised, error_info(exc).traceback))
                return
            if deliberate(exc, self.job.fail_on):
                self._wake_with(self._finish(h.RunFailed(error=error_info(exc))))
                return
            # A bug in handler code: the run keeps its place and waits for a fix.
            self._wake_with(self._block_on_error(exc))
            return
        if self._unwinding is not None:
            # The handler swallowed the engine's unwinding (``except BaseException``) and
            # returned: the run stops where it was stopped, not past it.
            self._wake_with(self._stopped(self._unwinding))
            return
        if self._atoms < len(self.recorded.order):
            self._wake_with(self._diverged("returned"))
            return
        try:
            raw = msgspec.json.encode(output)
        except (TypeError, ValueError) as exc:
            # The code is wrong, not the run: a fix that converts the value finishes it.
            message = (
                f"the handler returned a {type(output).__name__} jetlane cannot record: {exc}; "
                "return JSON-shaped data (dict, list, str, numbers, msgspec Structs, "
                "dataclasses) and deploy the fix: the run resumes"
            )
            self._wake_with(self._block_with(bounded_error("OutputError", message)))
            return
        if len(raw) > self.max_payload:
            info = error_info(PayloadTooLarge(f"output is {len(raw)} bytes; {self._limit_text()}"))
            self._wake_with(self._finish(h.RunFailed(error=info)))
            return
        self._wake_with(self._finish(h.RunCompleted(output=msgspec.Raw(raw))))

    def _wake_with(self, decision: Decision) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(decision)

    async def _request(self, decision: Decision) -> Any:
        if self._reply is not None or self._wake is None or self._wake.done():
            raise ConfigError(
                "step atoms must be awaited one at a time from the handler "
                "(no gather/create_task around atoms, no atoms inside step functions)"
            )
        self._reply = asyncio.get_running_loop().create_future()
        self._wake.set_result(decision)
        return await self._reply

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
        step = self.recorded.order[self._atoms]
        return self._block(
            step,
            f"the handler {what}, but the history records "
            f"{ATOM_CALL[self.recorded.steps[step].atom]}({base_name(step)!r}) as step "
            f"#{self._atoms + 1} ({step!r})" + ADVICE,
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
        count = self._occurrences.get(name, 0) + 1
        self._occurrences[name] = count
        step = name if count == 1 else f"{name}#{count}"
        index = self._atoms
        self._atoms += 1
        if index < len(self.recorded.order):
            recorded = self.recorded.order[index]
            rec_atom = self.recorded.steps[recorded].atom
            if (recorded, rec_atom) != (step, atom):
                raise self._unwind(
                    Diverged(
                        step,
                        f"step #{index + 1} is recorded as {ATOM_CALL[rec_atom]}"
                        f"({base_name(recorded)!r}) (step id {recorded!r}), but the code now calls "
                        f"{ATOM_CALL[atom]}({name!r}) (step id {step!r})" + ADVICE,
                    )
                )
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
                return typed_result(last.result, fn)
            if isinstance(last, h.StepFailed):
                if last.retry_at is None:
                    raise StepFailed(step, last.attempt, last.error.type, last.error.message)
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
                return
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
        token = timer_token(step, "wait_timeout", 1)
        marked = list(types) if any_of else None  # what marks a wait_for_any on the wire
        while True:
            entries = self.recorded.entries(step)
            started: h.WaitStarted | None = None
            for entry in entries:
                if isinstance(entry, h.EventReceived):
                    return step, entry.input_seq
                if isinstance(entry, h.WaitTimedOut):
                    raise EventTimeout(step, types[0], types if any_of else None)
                if isinstance(entry, h.WaitStarted):
                    started = entry
            event_seq = self.recorded.next_event(types)
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
