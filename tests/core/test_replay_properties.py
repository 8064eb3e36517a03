"""Property tests of the core: random handlers, random input orders, random crashes.

A handler is a random program of atoms (steps that fail on chosen attempts,
sleeps, waits, recorded values); the world around it sends events, fires
timers early, late and twice, cancels, and crashes the runner. Whatever the
order, the journal must record each outcome once, a fresh replay of it must
add nothing, and a run that crashed must write the same journal as one that
did not.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetlane import (
    ChildFailed,
    ChildTimeout,
    Context,
    EventTimeout,
    NonRetryableError,
    RetryPolicy,
    StepFailed,
    step,
)
from jetlane import wire as h
from jetlane._core.replay import Blocked, Finished, Park

from .replay_driver import Driver, job_of, replay_fresh

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Do:
    name: str
    fails: frozenset[int]  # attempts that raise
    fatal: bool  # the failure is NonRetryableError
    limit: int


@dataclass(frozen=True)
class Sleep:
    name: str
    seconds: int


@dataclass(frozen=True)
class Wait:
    name: str
    type: str
    timeout: int


@dataclass(frozen=True)
class Value:
    which: str


@dataclass(frozen=True)
class Invoke:
    name: str
    timeout: int | None  # seconds; None: wait for the child as long as it takes


@dataclass(frozen=True)
class WaitAny:
    name: str
    types: tuple[str, ...]
    timeout: int


@dataclass(frozen=True)
class Par:
    """Branches run at once (``asyncio.gather``, or a ``TaskGroup``); each a list of
    atoms (no recorded values: those belong to the handler's own task)."""

    branches: tuple[tuple[Any, ...], ...]
    group: bool


@dataclass(frozen=True)
class Race:
    """Two atoms raced (``asyncio.wait(FIRST_COMPLETED)``), the loser cancelled; the
    winner names the step after: a replay must see the same winner."""

    first: Any
    second: Any


Op = Do | Sleep | Wait | Value | Invoke | WaitAny | Par | Race
names = st.sampled_from(["x", "y", "deploy:prod"])
types = st.sampled_from(["a", "b"])
atoms = st.one_of(
    st.builds(Do, names, st.frozensets(st.integers(1, 3)), st.booleans(), st.integers(0, 2)),
    st.builds(Sleep, names, st.integers(0, 90)),
    st.builds(Wait, names, types, st.integers(1, 90)),
    st.builds(Invoke, names, st.none() | st.integers(1, 90)),
    st.builds(
        WaitAny, names, st.sampled_from([("a", "b"), ("b", "a"), ("a",)]), st.integers(1, 90)
    ),
)
ops = st.one_of(
    atoms,
    st.builds(Value, st.sampled_from(["now", "uuid", "random"])),
    st.builds(
        Par,
        st.lists(st.lists(atoms, min_size=1, max_size=3).map(tuple), min_size=2, max_size=3).map(
            tuple
        ),
        st.booleans(),
    ),
    st.builds(Race, atoms, atoms),
)
programs = st.lists(ops, min_size=1, max_size=6)


@dataclass(frozen=True)
class Action:
    kind: str  # event, tick, early, dup, cancel
    arg: Any = None


actions = st.lists(
    st.one_of(
        st.builds(Action, st.just("event"), types),
        st.builds(Action, st.just("tick"), st.integers(0, 120)),
        st.builds(Action, st.sampled_from(["early", "dup"])),
        st.builds(Action, st.just("cancel")),
        st.builds(Action, st.just("child"), st.sampled_from(h.CHILD_STATUSES)),
    ),
    max_size=10,
)


def handler_for(program: list[Op], holder: list[Driver]) -> Any:
    def outcome(ctx: Context, op: Do) -> str:
        step_id = ctx.step_key.partition("/")[2]  # this step, even among parallel ones
        attempt = next(a for s, a in reversed(holder[0].executed) if s == step_id)
        if attempt in op.fails:
            raise (NonRetryableError if op.fatal else RuntimeError)(f"{step_id}@{attempt}")
        return f"{step_id}@{attempt}"

    async def run(ctx: Context, ops: Any, out: list[Any], where: str) -> list[Any]:
        for k, op in enumerate(ops):
            name = f"{getattr(op, 'name', '')}{where}"  # branches name their steps apart
            if isinstance(op, Do):
                policy = RetryPolicy(limit=op.limit, delay="7s", backoff="linear")
                try:
                    out.append(await step.do(name, partial(outcome, ctx, op), retries=policy))
                except StepFailed as exc:
                    out.append(f"failed:{exc.attempts}")
            elif isinstance(op, Sleep):
                await step.sleep(name, op.seconds)
            elif isinstance(op, Wait):
                try:
                    out.append(await step.wait_for_event(name, type=op.type, timeout=op.timeout))
                except EventTimeout:
                    out.append("timeout")
            elif isinstance(op, WaitAny):
                try:
                    got = await step.wait_for_any(name, types=op.types, timeout=op.timeout)
                    out.append(f"{got.type}:{got.payload}")
                except EventTimeout:
                    out.append("timeout")
            elif isinstance(op, Invoke):
                try:
                    out.append(await step.invoke(name, job="kid", timeout=op.timeout))
                except ChildFailed as exc:
                    out.append(f"child:{exc.status}")
                except ChildTimeout:
                    out.append("child:timeout")
            elif isinstance(op, Par):
                branches = [
                    run(ctx, branch, [], f"{where}/{k}.{b}") for b, branch in enumerate(op.branches)
                ]
                if op.group:
                    async with asyncio.TaskGroup() as tg:
                        tasks = [tg.create_task(branch) for branch in branches]
                    out.append([t.result() for t in tasks])
                else:
                    out.append(list(await asyncio.gather(*branches)))
            elif isinstance(op, Race):
                racers = [
                    asyncio.ensure_future(run(ctx, [racer], [], f"{where}/{k}.{r}"))
                    for r, racer in enumerate((op.first, op.second))
                ]
                done, pending = await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
                for loser in pending:
                    loser.cancel()
                won = min(r for r, task in enumerate(racers) if task in done)
                out.append(await step.do(f"won{where}/{k}", lambda won=won: won))  # type: ignore[misc]
            else:
                out.append(str(getattr(ctx, op.which)()))
        return out

    async def handler(ctx: Context) -> list[Any]:
        return await run(ctx, program, [], "")

    return handler


async def scenario(
    program: list[Op], acts: list[Action], crashes: frozenset[int], execute_crash: int | None
) -> Driver:
    """Run ``program`` through ``acts``; crash before the listed actions and mid-step.

    ``execute_crash=n``: every session crashes once, after running its n-th step
    function and before writing that step's outcome.
    """
    holder: list[Driver] = []
    d = Driver(job_of(handler_for(program, holder)))
    holder.append(d)
    execute = d.execute

    async def guarded(ex: Any) -> Any:
        # The promise under every crash: a step attempt whose outcome is recorded
        # never runs again.
        assert not any(
            isinstance(m.body, h.StepCompleted | h.StepFailed)
            and (m.body.step, m.body.attempt) == (ex.step, ex.attempt)
            for m in d.log
        ), f"{ex.step} attempt {ex.attempt} ran again after its outcome was recorded"
        return await execute(ex)

    d.execute = guarded  # type: ignore[method-assign]
    fired: list[h.Timer] = []

    async def advance() -> Any:
        before = len(d.log)
        decision = await d.advance(crash_at_execute=execute_crash)
        fired.extend(m.body for m in d.log[before:] if isinstance(m.body, h.Timer))
        return decision

    await advance()
    for i, act in enumerate(acts):
        if i in crashes:
            await d.crash()
        if act.kind == "event":
            d.event(act.arg, {"n": i})
        elif act.kind == "tick":
            d.tick(act.arg)
        elif act.kind == "early" and d.schedules:
            # an early (or forged) fire: a message only; the schedule stays armed
            d.publish(d.schedules[min(d.schedules)][1])
        elif act.kind == "dup" and fired:
            d.publish(fired[-1])
        elif act.kind == "cancel":
            d.cancel(f"c{i}")
        elif act.kind == "child":
            end_a_child(d, act.arg)
        fired.extend(m.body for m in d.log if isinstance(m.body, h.Timer) and m.body not in fired)
        await advance()
    for _ in range(60):
        decision = await advance()
        if isinstance(decision, Finished | Blocked):
            break
        assert isinstance(decision, Park)
        if end_a_child(d, "completed"):
            continue  # parked on a child with no timeout: the child ends
        at = d.next_fire_at()
        assert at is not None, f"parked on {decision.step} with no timer"
        d.clock.now = max(d.clock.now, at)
        d.fire_due()
    else:
        raise AssertionError("the run did not end")
    await d.close()
    return d


def end_a_child(d: Driver, status: str) -> bool:
    """The first child run started whose end the parent has not got ends (with its id
    as its output); False when there is none."""
    ended = {m.body.run_id for m in d.log if isinstance(m.body, h.ChildEnded)}
    child = next((c for c in d.children if c not in ended), None)
    if child is None:
        return False
    d.child_ends(child, child, status=status)
    return True


def encoded(d: Driver) -> list[bytes]:
    return [h.encode(e) for e in d.journal]


def check_journal(d: Driver) -> None:
    journal = d.journal
    outcomes: Counter[Any] = Counter()
    consumed: Counter[int] = Counter()
    inputs = {m.seq: m.body for m in d.log if m.direction == "in"}
    timer_sets = {(e.step, e.timer) for e in journal if isinstance(e, h.TimerSet)}
    for e in journal:
        if isinstance(e, h.StepCompleted):
            outcomes[("done", e.step)] += 1
        elif isinstance(e, h.StepFailed):
            outcomes[("failed", e.step, e.attempt)] += 1
        elif isinstance(
            e, h.SleepCompleted | h.EventReceived | h.WaitTimedOut | h.ChildResult | h.ChildTimedOut
        ):
            outcomes[("park", e.step)] += 1
        elif isinstance(e, h.ChildStarted):
            outcomes[("child", e.step)] += 1
        if isinstance(e, h.ChildResult):
            ended = inputs[e.input_seq]
            assert isinstance(ended, h.ChildEnded) and ended.run_id == e.run_id
        if isinstance(e, h.EventReceived):
            event = inputs[e.input_seq]
            assert isinstance(event, h.Event) and event.type == e.type
        if isinstance(e, h.SleepCompleted | h.WaitTimedOut) and e.input_seq is not None:
            timer = inputs[e.input_seq]
            assert isinstance(timer, h.Timer) and (e.step, timer.timer) in timer_sets
        seq = getattr(e, "input_seq", None)
        if seq is not None:
            consumed[seq] += 1
    assert all(n == 1 for n in outcomes.values()), outcomes
    assert all(n == 1 for n in consumed.values()), consumed
    ends = [i for i, e in enumerate(journal) if isinstance(e, h.TERMINAL)]
    assert ends == [len(journal) - 1]
    assert not any(isinstance(e, h.RunBlocked) for e in journal)


@SETTINGS
@given(programs, actions)
def test_any_order_records_each_outcome_once_and_replays_to_the_same_end(
    program: list[Op], acts: list[Action]
) -> None:
    async def main() -> None:
        d = await scenario(program, acts, frozenset(), None)
        check_journal(d)
        final = d.decisions[-1]
        decision, appends = await replay_fresh(d)
        assert appends == [] and decision == final
        # the same history with its last entry lost replays to the same entry
        if not any(isinstance(m.body, h.Cancel) for m in d.log):
            last = max(i for i, m in enumerate(d.log) if m.direction == "out")
            del d.log[last]
            decision, appends = await replay_fresh(d)
            assert isinstance(decision, Finished) and isinstance(final, Finished)
            assert [h.encode(a) for a in appends][-1:] == [h.encode(final.entry)]

    asyncio.run(main())


@SETTINGS
@given(programs, actions, st.data())
def test_a_run_that_crashes_anywhere_writes_the_same_journal(
    program: list[Op], acts: list[Action], data: st.DataObject
) -> None:
    crashes = data.draw(st.frozensets(st.integers(0, max(len(acts) - 1, 0))))
    execute_crash = data.draw(st.none() | st.integers(1, 4))

    async def main() -> None:
        live = await scenario(program, acts, frozenset(), None)
        crashed = await scenario(program, acts, crashes, execute_crash)
        check_journal(crashed)
        if any(isinstance(op, Par | Race) for op in program):
            # Parallel branches: what branches do anew after a crash may interleave
            # otherwise than in the run that did not crash (two waits for one event
            # type, steps that ran at once: every order happens live too). What holds:
            # the journal is sound (checked above) and no recorded step ran again
            # (checked in ``scenario``); replays of a journal agree (the test below).
            return
        else:
            assert encoded(crashed) == encoded(live)
        # re-executed steps are the only difference: the same attempts, maybe twice
        assert set(crashed.executed) == set(live.executed)

    asyncio.run(main())


@SETTINGS
@given(programs, actions, st.data())
def test_replay_from_any_prefix_the_run_stopped_at_gives_the_same_decision(
    program: list[Op], acts: list[Action], data: st.DataObject
) -> None:
    crashes = data.draw(st.frozensets(st.integers(0, max(len(acts) - 1, 0))))

    async def main() -> None:
        d = await scenario(program, acts, crashes, None)
        full, now = d.log, d.clock.now
        for length, then, live in d.boundaries:
            d.log, d.clock.now = full[:length], then
            decision, appends = await replay_fresh(d)
            assert appends == [], (length, appends)
            assert type(decision) is type(live)
            if isinstance(live, Park):
                assert isinstance(decision, Park) and decision.step == live.step
            if isinstance(live, Finished):
                assert decision == live
        d.log, d.clock.now = full, now

    asyncio.run(main())


@settings(max_examples=25, deadline=None)
@given(programs, programs)
def test_changed_code_blocks_or_agrees_and_never_raises(old: list[Op], new: list[Op]) -> None:
    async def main() -> None:
        d = await scenario(old, [], frozenset(), None)
        last = max(i for i, m in enumerate(d.log) if m.direction == "out")
        del d.log[last]  # the run had not ended when the new code was deployed
        holder = [d]
        d.job = job_of(handler_for(new, holder))
        await d.crash()
        decision = await d.advance()
        if isinstance(decision, Blocked):
            assert d.kinds[-1] == "run_blocked" and decision.step in d.log[-1].body.step
            assert old != new
        await d.close()

    asyncio.run(main())
