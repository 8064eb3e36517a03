"""Parallel branches: asyncio.gather / TaskGroup / create_task over atoms run their steps
at once, each checkpointed on its own; replay hands every branch its own outcome, in
the order the log holds them, whatever order they finished in."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from jetlane import Context, Failure, NonRetryableError, RetryPolicy, StepFailed, step
from jetlane import wire as h
from jetlane._core.definition import define_job
from jetlane._core.replay import Blocked, Finished, Park

from .replay_driver import Driver, job_of, of, plain

ONCE = RetryPolicy(limit=0)


class Gauge:
    """How many step functions run at once, at most."""

    def __init__(self) -> None:
        self.now = self.peak = 0
        self.calls: list[str] = []

    def step(self, name: str, result: Any, delay: float = 0.0) -> Any:
        async def run() -> Any:
            self.calls.append(name)
            self.now += 1
            self.peak = max(self.peak, self.now)
            try:
                await asyncio.sleep(delay)
            finally:
                self.now -= 1
            return result

        return run


async def test_gather_runs_the_steps_at_once_and_records_each() -> None:
    gauge = Gauge()

    async def fan_out(ctx: Context, urls: list[str]) -> list[int]:
        return list(
            await asyncio.gather(
                *(step.do(f"fetch:{u}", gauge.step(u, len(u), 0.01)) for u in urls)
            )
        )

    urls = ["a", "bb", "ccc", "dddd", "eeeee"]
    d = Driver(job_of(fan_out), urls)
    done = await d.advance()
    assert isinstance(done, Finished)
    assert plain(of(d, h.RunCompleted)[0].output) == [1, 2, 3, 4, 5]
    assert gauge.peak == 5  # all five ran at once
    assert sorted(e.step for e in of(d, h.StepCompleted)) == [f"fetch:{u}" for u in urls]


async def test_outcomes_land_in_completion_order_and_replay_gives_each_its_own() -> None:
    gauge = Gauge()
    delays = {"slow": 0.03, "mid": 0.02, "fast": 0.0}

    async def handler(ctx: Context) -> dict[str, str]:
        results = await asyncio.gather(
            *(step.do(n, gauge.step(n, f"result of {n}", delays[n])) for n in delays)
        )
        return dict(zip(delays, results, strict=True))

    d = Driver(job_of(handler))
    assert isinstance(await d.advance(), Finished)
    assert [e.step for e in of(d, h.StepCompleted)] == ["fast", "mid", "slow"]
    expected = {n: f"result of {n}" for n in delays}
    assert plain(of(d, h.RunCompleted)[0].output) == expected

    # A fresh core replays the whole log: each branch gets its own result, nothing runs.
    replayed = Driver(job_of(handler))
    replayed.log = [m for m in d.log if not isinstance(m.body, h.RunCompleted)]
    replayed._fed = 0
    await replayed.crash()
    done = await replayed.advance()
    assert isinstance(done, Finished) and replayed.executed == []
    assert plain(of(replayed, h.RunCompleted)[0].output) == expected


async def test_the_issue_example_taskgroup_with_a_sleep_and_a_wait_in_branches() -> None:
    async def handler(ctx: Context) -> str:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(step.sleep("cool-down", "10m"))
            ack = tg.create_task(step.wait_for_event("ack", type="ack", timeout="1h"))
        return str(ack.result())

    d = Driver(job_of(handler))
    parked = await d.advance()
    assert isinstance(parked, Park)
    assert {t.body.step for t in parked.timers} == {"cool-down", "ack"}  # both branches park
    d.event("ack", "ok")
    assert isinstance(await d.advance(), Park)  # the ack came; the sleep still runs
    assert [e.step for e in of(d, h.EventReceived)] == ["ack"]
    done = await d.run()
    assert isinstance(done, Finished) and plain(of(d, h.RunCompleted)[0].output) == "ok"


async def test_the_same_name_in_two_branches_is_a_clear_error() -> None:
    async def handler(ctx: Context) -> None:
        await asyncio.gather(step.do("fetch", lambda: 1), step.do("fetch", lambda: 2))

    d = Driver(job_of(handler))
    blocked = await d.advance()
    assert isinstance(blocked, Blocked) and blocked.error.type == "ConfigError"
    assert "two parallel branches" in blocked.error.message


async def test_a_name_used_again_after_its_branch_ended_numbers_on() -> None:
    async def handler(ctx: Context) -> list[int]:
        first = await asyncio.gather(step.do("a", lambda: 1), step.do("b", lambda: 2))
        again = await step.do("a", lambda: 3)  # the branch that used "a" is done
        return [*first, again]

    d = Driver(job_of(handler))
    assert isinstance(await d.advance(), Finished)
    assert [e.step for e in of(d, h.StepCompleted)][-1] == "a#2"


async def test_recorded_values_are_refused_inside_branches() -> None:
    async def handler(ctx: Context) -> None:
        async def branch(n: int) -> None:
            ctx.uuid()
            await step.do(f"s{n}", lambda: n)

        await asyncio.gather(branch(1), branch(2))

    d = Driver(job_of(handler))
    blocked = await d.advance()
    assert isinstance(blocked, Blocked) and "parallel branch" in blocked.error.message


async def test_gather_raises_the_first_failure_and_the_run_fails() -> None:
    def boom() -> None:
        raise NonRetryableError("no")

    async def handler(ctx: Context) -> None:
        await asyncio.gather(step.do("ok", lambda: 1), step.do("bad", boom, retries=ONCE))

    d = Driver(job_of(handler))
    done = await d.advance()
    assert isinstance(done, Finished) and isinstance(done.entry, h.RunFailed)
    assert done.entry.error.type == "StepFailed"


async def test_a_taskgroup_failure_cancels_siblings_and_their_steps_in_flight_are_recorded() -> (
    None
):
    gauge = Gauge()

    def boom() -> None:
        raise Failure("card declined")

    async def slow_then_more() -> None:
        await step.do("slow", gauge.step("slow", "done", 0.02))
        await step.do("never", gauge.step("never", "x"))

    async def handler(ctx: Context) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(slow_then_more())
            tg.create_task(step.do("charge", boom))

    d = Driver(job_of(handler))
    done = await d.advance()
    assert isinstance(done, Finished) and isinstance(done.entry, h.RunFailed)
    assert "never" not in gauge.calls  # the cancelled branch went no further
    # The step in flight when its branch was cancelled finished, and says so.
    assert [e.step for e in of(d, h.StepCompleted)] == ["slow"]
    kinds = d.kinds
    assert kinds.index("step_completed") < kinds.index("run_failed")

    replayed = Driver(job_of(handler))
    replayed.log = [m for m in d.log if not isinstance(m.body, h.RunFailed)]
    await replayed.crash()
    again = await replayed.advance()
    assert isinstance(again, Finished) and isinstance(again.entry, h.RunFailed)
    assert replayed.executed == []


async def test_max_parallel_caps_the_steps_executing_at_once() -> None:
    gauge = Gauge()

    async def handler(ctx: Context) -> int:
        values = await asyncio.gather(
            *(step.do(f"s{i}", gauge.step(f"s{i}", i, 0.005)) for i in range(12))
        )
        return sum(values)

    d = Driver(define_job(name="t", handler=handler, max_parallel=3, register=False))
    assert isinstance(await d.advance(), Finished)
    assert gauge.peak == 3 and len(gauge.calls) == 12
    assert plain(of(d, h.RunCompleted)[0].output) == sum(range(12))


async def test_a_wide_fan_out_runs_every_step_at_once_and_replays() -> None:
    # Each step waits until all have started: it finishes only if all run at once.
    # (The drive loop waits on one future per outcome, not on every step in flight,
    # which made a wide fan-out quadratic: 5,000 at once took 24s, now well under 1s.)
    width = 2000
    started = 0
    everyone = asyncio.Event()

    async def barrier(i: int) -> int:
        nonlocal started
        started += 1
        if started == width:
            everyone.set()
        await everyone.wait()
        return i

    async def handler(ctx: Context) -> int:
        values = await asyncio.gather(
            *(step.do(f"s{i}", functools.partial(barrier, i)) for i in range(width))
        )
        return sum(values)

    job = define_job(name="t", handler=handler, max_parallel=width, register=False)
    d = Driver(job)
    assert isinstance(await d.advance(), Finished)
    assert started == width and len(d.executed) == width
    assert plain(of(d, h.RunCompleted)[0].output) == sum(range(width))
    d.log = [m for m in d.log if not isinstance(m.body, h.RunCompleted)]
    await d.crash()
    assert isinstance(await d.advance(), Finished)
    assert len(d.executed) == width  # the replay ran none again


async def test_a_cancel_during_a_fan_out_ends_the_run() -> None:
    gauge = Gauge()

    async def handler(ctx: Context) -> None:
        await asyncio.gather(*(step.do(f"s{i}", gauge.step(f"s{i}", i, 0.01)) for i in range(4)))
        await step.do("after", gauge.step("after", 0))

    d = Driver(job_of(handler))
    d.cancel("stop")
    done = await d.advance()
    assert isinstance(done, Finished) and isinstance(done.entry, h.RunCancelled)
    assert "after" not in gauge.calls


async def test_a_branch_failure_caught_by_the_handler_replays_the_same_way() -> None:
    def boom() -> None:
        raise NonRetryableError("nope")

    async def handler(ctx: Context) -> str:
        try:
            await asyncio.gather(step.do("x", boom), step.do("y", lambda: "y"))
        except StepFailed as exc:
            return f"caught {exc.step}"
        return "no"

    d = Driver(job_of(handler))
    await d.advance()
    out = plain(of(d, h.RunCompleted)[0].output)
    assert out == "caught x"
    replayed = Driver(job_of(handler))
    replayed.log = [m for m in d.log if not isinstance(m.body, h.RunCompleted)]
    await replayed.crash()
    assert isinstance(await replayed.advance(), Finished)
    assert plain(of(replayed, h.RunCompleted)[0].output) == out and replayed.executed == []


@settings(max_examples=40, deadline=None)
@given(
    order=st.permutations(range(5)),
    steps_per_branch=st.lists(st.integers(1, 3), min_size=5, max_size=5),
    crash_at=st.integers(1, 12),
)
async def test_a_crash_anywhere_in_a_fan_out_never_reruns_a_recorded_step(
    order: list[int], steps_per_branch: list[int], crash_at: int
) -> None:
    """Branches finish in a random order; the runner dies after the n-th step function
    ran (its outcome lost). The run ends with the same output, and no step whose
    outcome was recorded runs again."""
    delay = {b: 0.001 * (rank + 1) for rank, b in enumerate(order)}

    async def handler(ctx: Context) -> list[list[str]]:
        async def branch(b: int) -> list[str]:
            done = []
            for k in range(steps_per_branch[b]):
                done.append(await step.do(f"b{b}.{k}", Gauge().step("", f"{b}.{k}", delay[b])))
            return done

        return list(await asyncio.gather(*(branch(b) for b in range(5))))

    expected = [[f"{b}.{k}" for k in range(steps_per_branch[b])] for b in range(5)]
    d = Watched(job_of(handler))
    done = await d.advance(crash_at_execute=crash_at)
    assert isinstance(done, Finished)
    assert plain(of(d, h.RunCompleted)[0].output) == expected
    completed = [e.step for e in of(d, h.StepCompleted)]
    assert len(completed) == len(set(completed)) == sum(steps_per_branch)
    assert d.reran == []


class Watched(Driver):
    """A driver that notes any step run again after its outcome was recorded."""

    reran: list[str]

    async def execute(self, ex: Any) -> Any:
        if not hasattr(self, "reran"):
            self.reran = []
        if any(isinstance(m.body, h.StepCompleted) and m.body.step == ex.step for m in self.log):
            self.reran.append(ex.step)
        return await super().execute(ex)


async def test_first_completed_races_replay_in_the_order_the_log_holds() -> None:
    """asyncio.wait(FIRST_COMPLETED) picks a winner by timing; a replay, where every
    outcome is already known, must still see only the winner done first."""
    gauge = Gauge()

    async def handler(ctx: Context) -> str:
        racers = {
            "slow": asyncio.create_task(step.do("slow", gauge.step("slow", "s", 0.03))),
            "fast": asyncio.create_task(step.do("fast", gauge.step("fast", "f", 0.0))),
        }
        done, pending = await asyncio.wait(racers.values(), return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        winner = max(name for name, task in racers.items() if task in done)
        await step.do(f"use:{winner}", lambda: winner)
        await step.wait_for_event("go", type="go")
        return winner

    d = Driver(job_of(handler))
    assert isinstance(await d.advance(), Park)
    assert [e.step for e in of(d, h.StepCompleted)] == ["fast", "use:fast", "slow"]
    await d.crash()  # a fresh core replays the log; the loser's outcome is known too
    d.event("go")
    done = await d.advance()
    assert isinstance(done, Finished) and plain(of(d, h.RunCompleted)[0].output) == "fast"
    assert [name for name, _ in d.executed].count("use:fast") == 1


async def test_each_parallel_step_function_sees_its_own_step_key() -> None:
    seen: dict[str, str] = {}

    async def handler(ctx: Context) -> None:
        def keyed(name: str) -> Any:
            async def run() -> None:
                await asyncio.sleep(0)
                seen[name] = ctx.step_key

            return run

        def sync_keyed(name: str) -> Any:
            def run() -> None:
                seen[name] = ctx.step_key

            return run

        await asyncio.gather(
            *(step.do(f"a{i}", keyed(f"a{i}")) for i in range(3)),
            *(step.do(f"s{i}", sync_keyed(f"s{i}")) for i in range(3)),
        )

    d = Driver(job_of(handler))
    assert isinstance(await d.advance(), Finished)
    assert seen == {n: f"r1/{n}" for n in ["a0", "a1", "a2", "s0", "s1", "s2"]}


async def test_create_task_then_an_atom_in_the_handler_replays() -> None:
    async def slow() -> str:
        await asyncio.sleep(0.02)
        return "y"

    async def handler(ctx: Context) -> list[str]:
        x = asyncio.create_task(step.do("x", lambda: "x"))
        y = await step.do("y", slow)  # the handler's own atom, before x's branch ran
        return [await x, y]

    d = Driver(job_of(handler))
    assert isinstance(await d.advance(), Finished)
    assert [e.step for e in of(d, h.StepCompleted)] == ["x", "y"]  # x finished first
    d.log = [m for m in d.log if not isinstance(m.body, h.RunCompleted)]
    await d.crash()
    done = await d.advance()
    assert isinstance(done, Finished), done
    assert plain(of(d, h.RunCompleted)[0].output) == ["x", "y"]
    assert sorted(d.executed) == [("x", 1), ("y", 1)]  # neither ran again


async def test_create_task_history_cut_after_the_branch_step_replays() -> None:
    # A crash after x's outcome was written and before y's: y runs again, x does not.
    async def slow() -> str:
        await asyncio.sleep(0.02)
        return "y"

    async def handler(ctx: Context) -> list[str]:
        x = asyncio.create_task(step.do("x", lambda: "x"))
        y = await step.do("y", slow)
        return [await x, y]

    d = Driver(job_of(handler))
    assert isinstance(await d.advance(), Finished)
    cut = next(i for i, m in enumerate(d.log) if isinstance(m.body, h.StepCompleted)) + 1
    d.log = d.log[:cut]
    d.executed = []
    await d.crash()
    done = await d.advance()
    assert isinstance(done, Finished), done
    assert d.executed == [("y", 1)]
    assert plain(of(d, h.RunCompleted)[0].output) == ["x", "y"]


async def test_sequential_code_that_swapped_two_steps_still_blocks() -> None:
    async def old(ctx: Context) -> None:
        await step.do("a", lambda: 1)
        await step.do("b", lambda: 2)

    async def new(ctx: Context) -> None:
        await step.do("b", lambda: 2)
        await step.do("a", lambda: 1)

    d = Driver(job_of(old))
    assert isinstance(await d.advance(), Finished)
    d.log = [m for m in d.log if not isinstance(m.body, h.RunCompleted)]
    d.job = job_of(new)
    await d.crash()
    blocked = await d.advance()
    assert isinstance(blocked, Blocked) and blocked.error.type == "NonDeterminismError"
    assert "step #1 is recorded as step.do('a')" in blocked.error.message


async def test_a_pause_mid_fan_out_parks_only_once_the_steps_in_flight_are_recorded() -> None:
    # An outcome handed to its branch was once not yet recorded when the next request
    # (a held Execute) made a paused run park: the park left it unwritten in memory.
    started: list[str] = []
    d: Driver

    def fn(i: int) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            started.append(f"s{i}")
            if i == 2:
                d.publish(h.Pause())  # taken in at the next fenced append
            await asyncio.sleep(0.002)
            return i

        return run

    async def handler(ctx: Context) -> int:
        return sum(await asyncio.gather(*(step.do(f"s{i}", fn(i)) for i in range(20))))

    d = Driver(define_job(name="t", handler=handler, max_parallel=4, register=False))
    assert isinstance(await d.advance(), Park)
    assert len(started) < 20  # the pause held the rest
    assert sorted(e.step for e in of(d, h.StepCompleted)) == sorted(started)
    d.publish(h.Resume())
    assert isinstance(await d.advance(), Finished)
    assert sorted(started) == sorted(f"s{i}" for i in range(20))  # each ran once
    assert plain(of(d, h.RunCompleted)[0].output) == sum(range(20))


async def test_a_cancel_taken_in_mid_fan_out_starts_no_further_step() -> None:
    started: list[str] = []
    d: Driver

    def fn(i: int) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            started.append(f"s{i}")
            if i == 0:
                d.cancel("stop")  # stored while the first 8 are in flight
            await asyncio.sleep(0.001 * (i % 3))
            return i

        return run

    async def handler(ctx: Context) -> None:
        await asyncio.gather(*(step.do(f"s{i}", fn(i)) for i in range(40)))
        await step.do("after", fn(99))

    d = Driver(define_job(name="t", handler=handler, max_parallel=8, register=False))
    done = await d.advance()
    assert isinstance(done, Finished) and isinstance(done.entry, h.RunCancelled)
    # The cancel is taken in at the first fenced append, before any slot is refilled.
    assert len(started) == 8 and "s99" not in started


async def test_a_paused_fan_out_replayed_by_a_fresh_runner_stays_held() -> None:
    """Found by the chaos checker: a runner that replays a paused run from scratch (its
    predecessor died) must not take the next event or step until a resume."""
    gauge = Gauge()

    async def handler(ctx: Context) -> Any:
        await asyncio.gather(*(step.do(f"s{i}", gauge.step(f"s{i}", i, 0.01)) for i in range(3)))
        return await step.wait_for_event("go", type="go", timeout="1h")

    d = Driver(job_of(handler))
    parked = await d.advance()  # the fan-out ran; the run waits for "go"
    assert isinstance(parked, Park) and len(of(d, h.StepCompleted)) == 3
    d.publish(h.Pause())
    assert isinstance(await d.advance(), Park)
    await d.crash()  # a fresh core replays the paused run
    d.event("go", 1)
    assert isinstance(await d.advance(), Park)
    assert not of(d, h.EventReceived) and not of(d, h.RunCompleted)
    d.publish(h.Resume())
    done = await d.advance()
    assert isinstance(done, Finished) and plain(of(d, h.RunCompleted)[0].output) == 1
