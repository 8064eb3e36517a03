"""The handler's branches: requests handed to the driver in turn, replay in log order.

``Replay`` runs the handler as ordinary asyncio tasks. Every atom a branch (the
handler's own task, or a task it made with ``asyncio.gather``/``TaskGroup``) calls
becomes a request; this module decides which request the driver gets next, when the
branches are quiet, and, on replay, hands recorded outcomes to branches in the order
the journal holds them (see README "Parallel steps"). Mixed into ``Replay``.
"""

from __future__ import annotations

import asyncio
import heapq
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .decisions import (
    Checkpoint,
    Decision,
    Execute,
    Outcome,
    Park,
    Waiting,
)
from .definition import RetryPolicy
from .determinism import ADVICE, ATOM_CALL, Diverged, base_name
from .errors import (
    ConfigError,
)

if TYPE_CHECKING:
    from .replay import Replay

# Loop iterations with nothing asked that make the handler's branches "quiet".
QUIET_ITERATIONS = 4
# An outcome recorded for a branch that no longer waits for it is not retried.
NO_RETRY = RetryPolicy(limit=0)


@dataclass
class _Request:
    """A branch's request: the decision for the driver, and the branch waiting on it."""

    decision: Decision
    future: asyncio.Future[Any]


def changed(replay: Replay) -> asyncio.Future[None]:
    """A future that is done once the handler asks something new (for a driver
    waiting on steps in flight after ``Waiting``)."""
    if replay._changed is None or replay._changed.done():
        replay._changed = asyncio.get_running_loop().create_future()
    return replay._changed


def _answer(replay: Replay, reply: Any) -> None:
    """Take the driver's reply to what was handed out."""
    if isinstance(reply, Outcome):
        request = replay._executing.pop(reply.step, None)
        if request is None and not reply.step and len(replay._executing) == 1:
            request = replay._executing.pop(next(iter(replay._executing)))
        if request is None:
            raise RuntimeError(f"an outcome for step {reply.step!r}, which is not executing")
        if not request.future.done():
            request.future.set_result(reply)
            replay._woken = True  # its branch records the outcome before what comes next
        else:
            # Its branch was cancelled (a TaskGroup sibling failed): the effect
            # happened all the same, so the outcome is recorded honestly.
            assert isinstance(request.decision, Execute)
            replay._record(request.decision.step, request.decision.attempt, reply, NO_RETRY)
        if not replay._executing and replay._drained is not None and not replay._drained.done():
            replay._drained.set_result(None)
        return
    if reply is not None:
        raise RuntimeError(f"next() takes an Outcome or None, not {reply!r}")
    handed, replay._handed = replay._handed, None
    if isinstance(handed, Checkpoint):
        released, replay._checkpoints = replay._checkpoints, []
    elif isinstance(handed, Park):
        # In a fixed order (by step), so that branches woken together act in the
        # same order live and on replay.
        released, replay._parked = replay._parked, []
        released.sort(key=lambda r: getattr(r.decision, "step", ""))
    else:
        return  # an Execute was started, or the handler may have asked something
    for request in released:
        if not request.future.done():
            request.future.set_result(None)


async def _decide(replay: Replay) -> Decision:
    """Let the handler run until it asks something the driver must act on."""
    while True:
        if (
            not replay._concurrent
            and replay._executing
            and not replay._pending
            and not replay._woken
            and replay._final is None
            and not (replay._turns or replay._unconsumed or replay._gate)
        ):
            # One branch, its step running: wait for its outcome (or a new request:
            # the driver also waits on changed()). No need to let the handler settle.
            # (Parallel branches settle first, so steps start in the same order.)
            return Waiting()
        await replay._settle()
        if replay._final is not None and not replay._executing:
            return replay._final
        if replay._pending:
            decision = replay._hand_out()
            if decision is not None:
                return decision
            continue
        if replay.paused and not replay._executing:
            # Held: nothing new is decided (a branch could take an event, or leave
            # a replay's gate) until a resume; steps in flight have reported.
            return replay._paused_park()
        if (replay._turns or replay._unconsumed or replay._gate) and replay._schedule_turn():
            continue
        if replay._executing:
            return Waiting()
        replay._parked = [r for r in replay._parked if not r.future.done()]  # cancelled
        if replay._parked:
            replay._handed = park = replay._merged_park()
            return park
        if replay._final is not None:
            return replay._final
        # Nothing asked: the handler's code awaits something else (I/O in the
        # function lane, before its first atom): wait for its next request or end.
        await replay.changed()


def _merged_park(replay: Replay) -> Park:
    """One ``Park`` for every parked branch: all their timers, named after the step
    whose timer comes first (the same live and on replay, whatever order they parked)."""
    parks = [r.decision for r in replay._parked if isinstance(r.decision, Park)]
    timers = tuple(t for p in parks for t in p.timers)
    late = datetime.max.replace(tzinfo=UTC)
    first = min(parks, key=lambda p: (min((t.fire_at for t in p.timers), default=late), p.step))
    return Park(first.step, timers)


def _hand_out(replay: Replay) -> Decision | None:
    """The next pending request as a decision (None: it was dealt with here)."""
    request = replay._pending[0]
    decision = request.decision
    if request.future.done():
        replay._pending.popleft()  # its branch was cancelled before it was handed out
        return None
    if isinstance(decision, Execute):
        if replay.paused or len(replay._executing) >= replay.job.max_parallel:
            if replay._executing:
                return Waiting()
            return replay._paused_park()
        replay._pending.popleft()
        replay._executing[decision.step] = request
        return decision
    replay._pending.popleft()
    if isinstance(decision, Checkpoint):
        replay._checkpoints.append(request)
        while replay._pending and isinstance(replay._pending[0].decision, Checkpoint):
            replay._checkpoints.append(replay._pending.popleft())
        replay._handed = decision
        return decision
    replay._parked.append(request)  # a Park: given out once nothing else is to do
    return None


async def _settle(replay: Replay) -> None:
    """Yield to the handler's tasks until they have asked something, or are quiet.

    Branches run as ordinary asyncio tasks; a branch woken by an answer runs within
    a loop iteration or two (one more per task it wakes in turn: gather, TaskGroup).
    Quiet means a few iterations in a row with no request, turn or branch end.
    """
    # A branch just handed a step's outcome runs first: it records the outcome and
    # asks its next request, so that the entry is in the outbox before the decision
    # (another step started, or a Park that a paused run returns) is acted on.
    woken, replay._woken = replay._woken, False
    if replay._pending and not woken:
        return
    start = replay._activity
    idle = 0
    while idle < QUIET_ITERATIONS:
        before = replay._activity
        await asyncio.sleep(0)
        if replay._pending and (not woken or replay._activity != start):
            return
        idle = idle + 1 if replay._activity == before else 0


def _schedule_turn(replay: Replay) -> bool:
    """Replay of parallel branches, in log order: hand the earliest recorded outcome
    to the branch that waits for it, or pass over one that no branch will take
    (its branch was cancelled); once none is left, let the live run begin.
    True when something moved."""
    while replay._unconsumed and replay._unconsumed[0] in replay._consumed:
        heapq.heappop(replay._unconsumed)
    if replay._unconsumed:
        seq = heapq.heappop(replay._unconsumed)
        replay._consumed.add(seq)
        waiter = replay._turns.pop(seq, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True
    moved = False
    for seq, waiter in list(replay._turns.items()):  # recorded, but taken out of order
        del replay._turns[seq]
        if not waiter.done():
            waiter.set_result(None)
            moved = True
    replay._replayed = True
    gate, replay._gate = replay._gate, []
    for _, waiter in sorted(gate, key=lambda g: g[0]):  # in a fixed order: by step
        if not waiter.done():
            waiter.set_result(None)
            moved = True
    return moved


async def _turn(replay: Replay, step: str) -> None:
    """Before a branch goes past ``step`` on a recorded outcome: wait until every
    outcome recorded before it has been handed out (parallel branches only)."""
    await replay._confirm(step)
    seq = replay.recorded.proceeds.get(step)
    if seq is None or seq in replay._consumed:
        return
    if not replay._concurrent or (replay._unconsumed and replay._unconsumed[0] == seq):
        replay._consumed.add(seq)
        return
    waiter = asyncio.get_running_loop().create_future()
    replay._turns[seq] = waiter
    replay._poke()
    await waiter


async def _live(replay: Replay, step: str) -> None:
    """Before a branch does something new (runs a step, writes an entry): wait
    until every recorded outcome has been handed out (parallel branches only)."""
    await replay._confirm(step)
    if not replay._concurrent or replay._replayed:
        return
    # The first time, every branch waits here until the handler is quiet and every
    # recorded outcome handed out; then all go on together, in a fixed order.
    waiter = asyncio.get_running_loop().create_future()
    replay._gate.append((step, waiter))
    replay._poke()
    await waiter


def _poke(replay: Replay) -> None:
    replay._activity += 1
    if replay._changed is not None and not replay._changed.done():
        replay._changed.set_result(None)


async def _wind_down(replay: Replay) -> None:
    """The handler has ended: branches still running are cancelled (structured
    concurrency), and steps in flight finish and are recorded before the end is."""
    running = [t for t in replay._branches if not t.done()]
    for task in running:
        task.cancel()
    if running:
        await asyncio.wait(running)
    if replay._executing:
        replay._drained = asyncio.get_running_loop().create_future()
        replay._poke()
        await replay._drained


def _branch_enters(replay: Replay, name: str) -> None:
    """Note which task uses step name ``name``: one name, one branch."""
    task = asyncio.current_task()
    assert task is not None
    if task is not replay._task and task not in replay._branches:
        replay._branches.add(task)
        replay._concurrent = True
        task.add_done_callback(lambda _: replay._poke())
    owner = replay._owner.get(name)
    if owner is None or owner.done():
        replay._owner[name] = task
    elif owner is not task:
        raise ConfigError(
            f"step name {name!r} is used by two parallel branches; steps of parallel "
            f"branches need names of their own, e.g. f'{name}:{{item}}'"
        )


def _check_by_id(replay: Replay, step: str, atom: str) -> None:
    recorded_step = replay.recorded.steps.get(step)
    if recorded_step is not None and recorded_step.atom != atom:
        raise replay._unwind(
            Diverged(
                step,
                f"step {step!r} is recorded as {ATOM_CALL[recorded_step.atom]}"
                f"({base_name(step)!r}), but the code now calls {ATOM_CALL[atom]}"
                f"({base_name(step)!r})" + ADVICE,
            )
        )


async def _confirm(replay: Replay, step: str) -> None:
    """A positional mismatch at ``step`` (see ``enter``) is a divergence unless a
    branch of the handler calls an atom meanwhile: then steps are matched by id."""
    suspect = replay._suspect
    if suspect is None or suspect[0] != step:
        return
    replay._suspect = None
    for _ in range(QUIET_ITERATIONS):
        if replay._concurrent:
            break
        replay._poke()  # not quiet: the handler is still deciding
        await asyncio.sleep(0)
    if not replay._concurrent:
        raise replay._unwind(suspect[2])
    replay._check_by_id(step, suspect[1])
