"""The atoms' bodies: ``step.do``, ``step.sleep``, ``step.wait_for_event``/``wait_for_any``
and child runs, deciding from what the history records. Mixed into ``Replay``."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from . import children
from . import history as h
from .bounds import (
    bounded_error,
    error_info,
)
from .decisions import (
    Checkpoint,
    Execute,
    Outcome,
    Park,
    TimerSpec,
    Unschedule,
    timer_token,
    typed_result,
)
from .definition import DEFAULT_RETRY, RetryPolicy
from .determinism import Held
from .durations import format_time, parse_time
from .errors import (
    EventTimeout,
    NonRetryableError,
    PayloadTooLarge,
    StepFailed,
)
from .received import Event
from .recorded import UNRECORDABLE

if TYPE_CHECKING:
    from .replay import Replay


async def do(
    replay: Replay,
    name: str,
    fn: Callable[[], Any],
    retries: RetryPolicy | None,
    timeout: float | None,
) -> Any:
    step = replay.enter(name, "do")
    policy = DEFAULT_RETRY if retries is None else retries
    while True:
        last = replay._last_outcome(step)
        attempt = 1
        if isinstance(last, h.StepCompleted):
            await replay._turn(step)
            return typed_result(last.result, fn)
        if isinstance(last, h.StepFailed) and last.retry_at is None:
            await replay._turn(step)
            raise StepFailed(step, last.attempt, last.error.type, last.error.message)
        await replay._live(step)
        if isinstance(last, h.StepFailed) and last.retry_at is not None:
            token = timer_token(step, "retry", last.attempt)
            retry_at = parse_time(last.retry_at)
            if replay.clock() < retry_at:
                # Only time ends the wait: a timer input (fired, forged or orphaned
                # by a crash) just wakes the run to look at the clock.
                await replay._park(step, token, retry_at, h.Timer(token, step, "retry"))
                continue
            attempt = last.attempt + 1
        replay.current_step = step
        if replay.recorded.holds(step):
            # Its effect happened and its result was not recordable: run it again
            # only when an operator says so (a resume), never on a mere replay.
            raise replay._unwind(Held(step, replay._unrecordable(step, None)))
        # Values the handler took (ctx.uuid() for an idempotency key, ...) are
        # durable before a step that may have been handed them starts.
        replay._record_values()
        outcome: Outcome = await replay._request(Execute(step, attempt, fn, timeout))
        replay._record(step, attempt, outcome, policy)
        await replay._request(Checkpoint())
        if replay.recorded.holds(step):
            raise replay._unwind(Held(step, replay._blocked_info(step)))


def _unrecordable(
    replay: Replay, step: str, result: Any, exc: BaseException | None = None
) -> h.ErrorInfo:
    if exc is None:
        return replay._blocked_info(step)
    message = (
        f"step {step!r} returned a {type(result).__name__}, which jetlane cannot record "
        f"({exc}). Its effect happened, so the run is held here rather than failed or "
        "retried: make the step function return JSON-shaped data (e.g. response.json() "
        "instead of the response), deploy the fix, then resume the run "
        "(jetlane resume RUN_ID) to run the step again"
    )
    return bounded_error(UNRECORDABLE, message)


def _blocked_info(replay: Replay, step: str) -> h.ErrorInfo:
    """The error of the run_blocked that holds ``step``."""
    last = replay.recorded.last_entry
    if isinstance(last, h.RunBlocked) and last.step == step:
        return last.error
    message = f"step {step!r} is held on a result that could not be recorded"
    return bounded_error(UNRECORDABLE, message + "; resume the run to run it again")


def _last_outcome(replay: Replay, step: str) -> Any:
    return replay.recorded.last_outcome(step)


def _record(replay: Replay, step: str, attempt: int, outcome: Outcome, policy: RetryPolicy) -> None:
    error = outcome.error
    if error is None:
        try:
            raw = msgspec.json.encode(outcome.result)
        except (TypeError, ValueError) as exc:
            # The step's effect happened; failing it would lose that, retrying it would
            # repeat it. Hold the run here until a fix and a resume (see ``do``).
            info = replay._unrecordable(step, outcome.result, exc)
            replay._emit(h.RunBlocked(step=step, error=info))
            return
        else:
            if len(raw) > replay.max_payload:
                error = PayloadTooLarge(
                    f"step {step!r} returned {len(raw)} bytes; {replay._limit_text()}"
                )
            else:
                replay._emit(
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
        replay._emit(h.StepFailed(step=step, attempt=attempt, error=info, retry_at=None))
        return
    fire_at = replay.clock() + timedelta(seconds=delay)
    token = replay._schedule(step, "retry", attempt, fire_at)
    at = format_time(fire_at)
    replay._emit(h.StepFailed(step=step, attempt=attempt, error=info, retry_at=at))
    replay._emit(h.TimerSet(step=step, timer=token, fire_at=at, purpose="retry"))


async def sleep(replay: Replay, name: str, seconds: float | None, until: datetime | None) -> None:
    step = replay.enter(name, "sleep")
    token = timer_token(step, "sleep", 1)
    while True:
        entries = replay.recorded.entries(step)
        if any(isinstance(e, h.SleepCompleted) for e in entries):
            await replay._turn(step)
            return
        await replay._live(step)
        timer_set = next((e for e in entries if isinstance(e, h.TimerSet)), None)
        if timer_set is None:
            now = replay.clock()
            fire_at = until if until is not None else now + timedelta(seconds=seconds or 0)
            if fire_at <= now:
                replay._emit(h.SleepCompleted(step=step, input_seq=None))
                return
            replay._schedule(step, "sleep", 1, fire_at)
            at = format_time(fire_at)
            replay._emit(h.TimerSet(step=step, timer=token, fire_at=at, purpose="sleep"))
        else:
            fire_at = parse_time(timer_set.fire_at)
        if replay.clock() >= fire_at:
            # Ended by time, not by a message: an inbox publisher cannot forge it.
            replay._emit(h.SleepCompleted(step=step, input_seq=None))
            return
        await replay._park(step, token, fire_at, h.Timer(token, step, "sleep"))


async def wait(replay: Replay, name: str, type: str, timeout: float) -> Any:
    step, seq = await replay._wait(name, (type,), timeout, any_of=False)
    return replay._payload(step, seq)


async def wait_any(replay: Replay, name: str, types: tuple[str, ...], timeout: float) -> Event:
    step, seq = await replay._wait(name, types, timeout, any_of=True)
    event = replay.recorded.event_at[seq]
    return Event(type=event.type, payload=replay._payload(step, seq), seq=seq)


async def _wait(
    replay: Replay, name: str, types: tuple[str, ...], timeout: float, *, any_of: bool
) -> tuple[str, int]:
    """Park until an event of one of ``types``: its step id and input sequence."""
    step = replay.enter(name, "wait_any" if any_of else "wait")
    try:
        return await replay._waiting(step, types, timeout, any_of)
    finally:
        replay._open_waits.pop(step, None)


def _opened(replay: Replay, step: str, types: tuple[str, ...]) -> None:
    """Note that ``step``'s wait has started (its wait_started is recorded)."""
    if step in replay._open_waits:
        return
    seq = replay.recorded.wait_started_at.get(step)
    if seq is not None:
        key: tuple[float, int] = (seq, 0)
    else:  # written in this session: after everything read, in the order written
        replay._emitted += 1
        key = (replay.recorded.last_seq + 0.5, replay._emitted)
    replay._open_waits[step] = (key, types)


def _event_for(replay: Replay, step: str, types: tuple[str, ...]) -> int | None:
    """The event this wait takes: the earliest of its types that no wait started
    before it (in another branch) takes first; the same live and on replay."""
    if not replay._open_waits or list(replay._open_waits) == [step]:
        return replay.recorded.next_event(types)
    waits = sorted((key, s, t) for s, (key, t) in replay._open_waits.items())
    if step not in replay._open_waits:
        waits.append(((math.inf, 0), step, types))  # starting now: after the others
    taken: set[int] = set()
    for _, other, wanted in waits:
        seq = next(
            (
                q
                for q, e in replay.recorded.events
                if e.type in wanted and q not in replay.recorded.consumed and q not in taken
            ),
            None,
        )
        if other == step:
            return seq
        if seq is not None:
            taken.add(seq)
    return None


async def _waiting(
    replay: Replay, step: str, types: tuple[str, ...], timeout: float, any_of: bool
) -> tuple[str, int]:
    token = timer_token(step, "wait_timeout", 1)
    marked = list(types) if any_of else None  # what marks a wait_for_any on the wire
    while True:
        entries = replay.recorded.entries(step)
        started: h.WaitStarted | None = None
        for entry in entries:
            if isinstance(entry, h.EventReceived):
                await replay._turn(step)
                return step, entry.input_seq
            if isinstance(entry, h.WaitTimedOut):
                await replay._turn(step)
                raise EventTimeout(step, types[0], types if any_of else None)
            if isinstance(entry, h.WaitStarted):
                started = entry
                replay._opened(step, types)
        await replay._live(step)
        event_seq = replay._event_for(step, types)
        if event_seq is not None:
            # An event stored before the runner decides wins, even at the deadline.
            taken = replay.recorded.event_at[event_seq].type
            replay._emit(h.EventReceived(step=step, type=taken, input_seq=event_seq, types=marked))
            if started is not None:
                replay.outbox.append(Unschedule(token))
            return step, event_seq
        if started is not None and replay.clock() >= parse_time(started.timeout_at):
            replay._emit(h.WaitTimedOut(step=step, type=types[0], input_seq=None, types=marked))
            raise EventTimeout(step, types[0], types if any_of else None)
        if started is None:
            timeout_at = replay.clock() + timedelta(seconds=timeout)
            replay._schedule(step, "wait_timeout", 1, timeout_at)
            at = format_time(timeout_at)
            replay._emit(h.WaitStarted(step=step, type=types[0], timeout_at=at, types=marked))
            replay._opened(step, types)
            replay._emit(h.TimerSet(step=step, timer=token, fire_at=at, purpose="wait_timeout"))
            fire_at = timeout_at
        else:
            fire_at = parse_time(started.timeout_at)
        await replay._park(step, token, fire_at, h.Timer(token, step, "wait_timeout"))


async def invoke(
    replay: Replay,
    name: str,
    job: str,
    input: Any,
    run_id: str | None,
    timeout: float | None,
    *,
    detached: bool = False,
) -> Any:
    """``step.invoke`` / ``step.start_run``: see ``children``."""
    return await children.invoke(replay, name, job, input, run_id, timeout, detached=detached)


def _payload(replay: Replay, step: str, seq: int) -> Any:
    """The payload of the event a wait took; one over the size limit fails the step."""
    payload = replay.recorded.event_at[seq].payload
    size = len(msgspec.json.encode(payload))
    if size > replay.max_payload:
        # Decided from the log alone, so a replay raises the same error again.
        message = f"event payload for step {step!r} is {size} bytes; {replay._limit_text()}"
        raise StepFailed(step, 1, "PayloadTooLarge", message)
    return payload


async def _park(replay: Replay, step: str, token: str, fire_at: datetime, body: h.Timer) -> None:
    rearm = token not in replay._armed
    replay._armed.add(token)
    await replay._request(Park(step, (TimerSpec(token, fire_at, body, rearm),)))
