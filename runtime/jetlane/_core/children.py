"""Child runs: ``step.invoke`` and ``step.start_run`` (pure; the atoms' logic).

Design note. A child run is an ordinary run whose ``start`` names its parent
(``parent: {run_id, step}``). Its id is deterministic: given by the code, or
derived from the parent's id and the step id, so a replay, a crash between
storing the start and recording it, or a second runner all name the same run,
and storing the start is create-once. The parent records ``child_started``
only once the child's start is stored (the driver does both, in that order,
for a ``StartChild`` effect), then parks.

The child's end reaches the parent as a ``child_ended`` input on the parent's
inbox, published by the runner that writes the child's terminal entry before
it acknowledges the delivery, with a message id per child (dedupe). It is an
input, so it is durable whenever it comes: before the parent parks, while it
is written, or long after. A runner that dies between the terminal entry and
that publish leaves it to the next replay of the ended run, which publishes it
again (as it purges timers again). The invoke atom takes the first
``child_ended`` for its child and records ``child_result`` (which input it
took); a timeout records ``child_timed_out`` and cancels the child, unless the
child's end was stored before the runner decided (the end wins).

A parent that ends (cancelled, or failed while a parallel branch waited)
cancels the invoke children it still waits on; ``start_run`` children are
detached: never cancelled by their parent, and they report their end to no one.

The core stays pure: the atoms only decide entries and effects (``StartChild``,
``CancelChild``, ``NotifyParent``); the drive loop performs them.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from . import history as h
from .decisions import (
    CancelChild,
    Checkpoint,
    Effect,
    NotifyParent,
    Park,
    StartChild,
    Unschedule,
)
from .decisions import timer_token as timer_token
from .determinism import ADVICE, Diverged
from .durations import format_time, parse_time
from .errors import ChildFailed, ChildTimeout

if TYPE_CHECKING:
    from .replay import Replay

TIMEOUT = "child_timeout"  # the purpose of an invoke's timeout timer


def child_id(parent: str, step: str) -> str:
    """The run id of the child that step ``step`` of run ``parent`` starts.

    A pure function of the two, and a valid run id whatever the step id holds
    (``:``, ``#``, spaces): the parent's id, ``-``, and a hash of the step id;
    a long parent id is shortened and the hash then covers both."""
    digest = hashlib.blake2b(step.encode(), digest_size=8).hexdigest()
    child = f"{parent}-{digest}"
    if len(child) <= 128:
        return child
    whole = hashlib.blake2b(f"{parent}/{step}".encode(), digest_size=16).hexdigest()
    return f"{parent[:95]}-{whole}"


def ended_body(
    run_id: str, terminal: h.RunCompleted | h.RunFailed | h.RunCancelled
) -> h.ChildEnded:
    """The ``child_ended`` input that tells a parent how run ``run_id`` ended."""
    if isinstance(terminal, h.RunCompleted):
        output = terminal.output
        if isinstance(output, msgspec.Raw):
            output = msgspec.json.decode(output)
        return h.ChildEnded(run_id=run_id, status="completed", output=output)
    if isinstance(terminal, h.RunFailed):
        return h.ChildEnded(run_id=run_id, status="failed", error=terminal.error)
    error = h.ErrorInfo(type="Cancelled", message=terminal.reason or "cancelled")
    return h.ChildEnded(run_id=run_id, status="cancelled", error=error)


def started_entry(effect: StartChild, found: h.Start | None) -> h.ChildStarted:
    """The ``child_started`` to append after storing ``effect.start``: ``found`` is the
    start the child's inbox already held (None: ours is stored now)."""
    if found is None or found.parent == effect.start.parent:
        return effect.entry  # stored now, or by us before a crash (create-once)
    message = (
        f"run {effect.entry.run_id!r} already exists"
        + (
            f" (a child of run {found.parent.run_id!r})"
            if found.parent is not None
            else " (not started by this step)"
        )
        + "; give step.invoke/start_run a run_id no other run has, or leave it out"
    )
    error = h.ErrorInfo(type="RunAlreadyExists", message=message)
    return msgspec.structs.replace(effect.entry, error=error, timeout_at=None)


def pending(replay: Replay) -> list[str]:
    """The invoke children the run started and has not seen end (nor given up on)."""
    waiting = []
    for step in replay.recorded.order:
        record = replay.recorded.steps[step]
        if record.atom != "invoke":
            continue
        started = next((e for e in record.entries if isinstance(e, h.ChildStarted)), None)
        if started is None or started.error is not None:
            continue
        if any(isinstance(e, h.ChildResult | h.ChildTimedOut) for e in record.entries):
            continue
        if started.run_id not in replay.recorded.child_ends:
            waiting.append(started.run_id)
    return waiting


def after_end(replay: Replay) -> list[Effect]:
    """What a run's end sets off, besides its terminal entry (idempotent effects, issued
    again by a replay that finds the run ended): cancel the invoke children it still
    waits on, and tell its parent (unless it is a detached child)."""
    effects: list[Effect] = [
        CancelChild(child, f"parent run {replay.run_id} ended") for child in pending(replay)
    ]
    start = replay.start
    if start is not None and start.parent is not None and not start.parent.detached:
        effects.append(NotifyParent(start.parent.run_id))
    return effects


async def invoke(
    replay: Replay,
    name: str,
    job: str,
    input: Any,
    run_id: str | None,
    timeout: float | None,
    *,
    detached: bool,
) -> Any:
    """``step.invoke`` (the child's output) and ``step.start_run`` (its run id)."""
    step = replay.enter(name, "start_run" if detached else "invoke")
    wanted = run_id if run_id is not None else child_id(replay.run_id, step)
    token = timer_token(step, TIMEOUT, 1)
    while True:
        entries = replay.recorded.entries(step)
        started = next((e for e in entries if isinstance(e, h.ChildStarted)), None)
        if started is None:
            await replay._live(step)
            timeout_at = None
            if timeout is not None:
                timeout_at = format_time(replay.clock() + timedelta(seconds=timeout))
            parent = h.Parent(run_id=replay.run_id, step=step, detached=detached)
            entry = h.ChildStarted(
                step=step, run_id=wanted, job=job, timeout_at=timeout_at, detached=detached
            )
            # Values the handler took (a ctx.uuid() in the input) are durable first.
            replay._record_values()
            replay.outbox.append(StartChild(h.Start(job=job, input=input, parent=parent), entry))
            # The driver stores the start, appends child_started and applies it here.
            await replay._request(Checkpoint())
            continue
        if (started.run_id, started.job) != (wanted, job):
            raise replay._unwind(
                Diverged(
                    step,
                    f"step {step!r} started child run {started.run_id!r} of job "
                    f"{started.job!r}, but the code now asks for run {wanted!r} of job "
                    f"{job!r}" + ADVICE,
                )
            )
        if started.error is not None:
            await replay._turn(step)
            raise ChildFailed(
                step, started.run_id, "rejected", started.error.type, started.error.message
            )
        if detached:
            await replay._turn(step)
            return started.run_id
        for entry in entries:
            if isinstance(entry, h.ChildResult):
                await replay._turn(step)
                return _outcome(replay, step, entry.input_seq)
            if isinstance(entry, h.ChildTimedOut):
                await replay._turn(step)
                if started.run_id not in replay.recorded.child_ends:
                    # The cancel may have been lost with the runner that decided:
                    # cancelling twice is harmless.
                    replay.outbox.append(CancelChild(started.run_id, _gave_up(step)))
                raise ChildTimeout(step, started.run_id)
        await replay._live(step)
        seq = replay.recorded.child_ends.get(started.run_id)
        if seq is not None:
            # A child's end stored before the runner decides wins, even at the deadline.
            status = replay.recorded.child_end_at[seq].status
            replay._emit(
                h.ChildResult(step=step, run_id=started.run_id, status=status, input_seq=seq)
            )
            if started.timeout_at is not None:
                replay.outbox.append(Unschedule(token))
            return _outcome(replay, step, seq)
        if started.timeout_at is None:
            await replay._request(Park(step))
            continue
        fire_at = parse_time(started.timeout_at)
        if replay.clock() >= fire_at:
            replay._emit(h.ChildTimedOut(step=step, run_id=started.run_id))
            replay.outbox.append(CancelChild(started.run_id, _gave_up(step)))
            raise ChildTimeout(step, started.run_id)
        if not any(isinstance(e, h.TimerSet) for e in entries):
            replay._schedule(step, TIMEOUT, 1, fire_at)
            replay._emit(
                h.TimerSet(step=step, timer=token, fire_at=started.timeout_at, purpose=TIMEOUT)
            )
        await replay._park(step, token, fire_at, h.Timer(token, step, TIMEOUT))


def _gave_up(step: str) -> str:
    return f"the parent's step {step!r} timed out waiting for it"


def _outcome(replay: Replay, step: str, seq: int) -> Any:
    ended = replay.recorded.child_end_at[seq]
    if ended.status == "completed":
        return ended.output
    error = ended.error or h.ErrorInfo(type="Error", message=ended.status)
    raise ChildFailed(step, ended.run_id, ended.status, error.type, error.message)
