"""The pure core, atom by atom: step.do, retries, recorded values, determinism, inputs."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime, timedelta
from typing import Any, TypedDict

import msgspec
import pytest

from jetlane import Context, NonRetryableError, RetryPolicy, StepFailed, step
from jetlane import wire as h
from jetlane._core.durations import format_time
from jetlane._core.replay import Blocked, Finished, Park, Replay, timer_token

from .replay_driver import T0, Driver, FakeClock, entropy, job_of, of, plain, replay_fresh

# -- step.do ----------------------------------------------------------------------


async def test_do_records_once_and_replay_does_not_call_fn() -> None:
    calls: list[str] = []

    def one() -> int:
        calls.append("a")
        return 1

    def two() -> int:
        calls.append("b")
        return 2

    async def handler(ctx: Context) -> int:
        a = await step.do("a", one)
        b = await step.do("b", two)
        return a + b

    d = Driver(job_of(handler))
    done = await d.run()
    assert isinstance(done, Finished)
    assert d.kinds == ["step_completed", "step_completed", "run_completed"]
    assert plain(of(d, h.RunCompleted)[0].output) == 3
    first = of(d, h.StepCompleted)[0]
    assert (first.step, first.attempt, first.started_at) == ("a", 1, format_time(T0))
    # crash before run_completed was written: a new core replays both steps
    del d.log[-1]
    await d.crash()
    assert isinstance(await d.advance(), Finished)
    assert calls == ["a", "b"]
    assert d.kinds == ["step_completed", "step_completed", "run_completed"]


async def test_repeated_names_get_occurrence_ids() -> None:
    async def handler(ctx: Context) -> list[str]:
        keys = []
        for _ in range(3):
            keys.append(await step.do("x", lambda: ctx.step_key))
        await step.sleep("x-nap", 0)
        return keys

    d = Driver(job_of(handler))
    await d.run()
    assert [e.step for e in of(d, h.StepCompleted)] == ["x", "x#2", "x#3"]
    assert plain(of(d, h.RunCompleted)[0].output) == ["r1/x", "r1/x#2", "r1/x#3"]


async def test_async_fn_is_awaited() -> None:
    async def fetch() -> str:
        return "fetched"

    async def handler(ctx: Context) -> str:
        return await step.do("f", fetch)

    d = Driver(job_of(handler))
    await d.run()
    assert plain(of(d, h.RunCompleted)[0].output) == "fetched"


def flaky(failures: int, exc: type[Exception] = RuntimeError) -> Any:
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise exc(f"boom {calls['n']}")
        return "ok"

    return fn


@pytest.mark.parametrize(
    ("policy", "waits"),
    [
        (RetryPolicy(limit=3, delay="10s", backoff="constant"), [10, 10, 10]),
        (RetryPolicy(limit=3, delay="10s", backoff="linear"), [10, 20, 30]),
        (RetryPolicy(limit=4, delay="10s", backoff="exponential"), [10, 20, 40, 80]),
        (
            RetryPolicy(limit=4, delay="10s", backoff="exponential", max_delay="25s"),
            [10, 20, 25, 25],
        ),
        (RetryPolicy(limit=0), []),
    ],
)
async def test_retry_at_follows_the_policy(policy: RetryPolicy, waits: list[int]) -> None:
    async def handler(ctx: Context) -> str:
        return await step.do("deploy", flaky(99), retries=policy)

    d = Driver(job_of(handler))
    done = await d.run()
    failed = of(d, h.StepFailed)
    assert [f.attempt for f in failed] == list(range(1, len(waits) + 2))
    at, expected = T0, []
    for wait in waits:
        at += timedelta(seconds=wait)
        expected.append(format_time(at))
    assert [f.retry_at for f in failed] == [*expected, None]
    timers = of(d, h.TimerSet)
    assert [(t.purpose, t.fire_at) for t in timers] == [("retry", x) for x in expected]
    assert [t.timer for t in timers] == [
        timer_token("deploy", "retry", n) for n in range(1, len(waits) + 1)
    ]
    assert d.executed == [("deploy", n) for n in range(1, len(waits) + 2)]
    assert isinstance(done, Finished) and isinstance(done.entry, h.RunFailed)
    assert done.entry.error.type == "StepFailed"
    assert f"after {len(waits) + 1} attempt(s)" in done.entry.error.message


async def test_default_policy_is_five_retries_exponential() -> None:
    async def handler(ctx: Context) -> str:
        return await step.do("d", flaky(99))

    d = Driver(job_of(handler))
    await d.run()
    failed = of(d, h.StepFailed)
    assert len(failed) == 6
    assert failed[1].retry_at == format_time(T0 + timedelta(seconds=10 + 20))


async def test_retry_succeeds_and_replay_uses_recorded_retry_at() -> None:
    fn = flaky(1)

    async def handler(ctx: Context) -> str:
        return await step.do("d", fn, retries=RetryPolicy(limit=2, delay="1m"))

    d = Driver(job_of(handler))
    parked = await d.advance()
    assert isinstance(parked, Park) and parked.step == "d"
    assert not parked.timers[0].rearm
    assert parked.timers[0].fire_at == T0 + timedelta(minutes=1)
    # a new core, later, parks on the recorded retry_at, not on a recomputed one
    d.clock.advance(30)
    await d.crash()
    again = await d.advance()
    assert isinstance(again, Park)
    assert again.timers[0].fire_at == T0 + timedelta(minutes=1)
    assert again.timers[0].rearm
    assert d.kinds == ["step_failed", "timer_set"]
    done = await d.run()
    assert isinstance(done, Finished) and plain(getattr(done.entry, "output", None)) == "ok"
    assert [e.attempt for e in of(d, h.StepCompleted)] == [2]


class Fatal(NonRetryableError):
    pass


async def test_non_retryable_stops_at_once_and_step_failed_is_catchable() -> None:
    async def handler(ctx: Context) -> str:
        try:
            await step.do("charge", flaky(99, Fatal), retries=RetryPolicy(limit=5))
        except StepFailed as exc:
            return f"{exc.step}:{exc.attempts}:{exc.type}:{exc.message}"
        return "unreachable"

    d = Driver(job_of(handler))
    await d.run()
    (failed,) = of(d, h.StepFailed)
    assert failed.retry_at is None
    assert (failed.error.type, failed.error.message) == ("Fatal", "boom 1")
    # a bounded traceback, innermost last: the step function that raised
    assert failed.error.traceback is not None and failed.error.traceback[-1].function == "fn"
    assert d.executed == [("charge", 1)]
    assert plain(of(d, h.RunCompleted)[0].output) == "charge:1:Fatal:boom 1"
    decision, appends = await replay_fresh(d)
    assert isinstance(decision, Finished) and appends == []


async def test_step_failed_is_raised_again_on_replay() -> None:
    async def handler(ctx: Context) -> str:
        try:
            await step.do("a", flaky(99), retries=RetryPolicy(limit=0))
        except StepFailed:
            return await step.do("fallback", lambda: "fb")
        return "no"

    d = Driver(job_of(handler))
    await d.run()
    del d.log[-1]
    await d.crash()
    await d.advance()
    assert d.executed == [("a", 1), ("fallback", 1)]
    assert plain(of(d, h.RunCompleted)[0].output) == "fb"


class User(msgspec.Struct):
    name: str
    born: datetime


@dataclasses.dataclass
class Point:
    x: int
    y: int


def get_user() -> User:
    return User("ada", T0)


def get_point() -> Point:
    return Point(1, 2)


async def test_results_are_typed_alike_live_and_on_replay() -> None:
    seen: list[Any] = []

    async def handler(ctx: Context) -> str:
        user = await step.do("u", get_user)
        point = await step.do("p", get_point)
        raw = await step.do("raw", lambda: {"t": format_time(T0)})
        seen.append((user, point, raw))
        await step.sleep("nap", 5)
        return user.name

    d = Driver(job_of(handler))
    await d.run()
    del d.log[-1]
    await d.crash()
    await d.advance()
    assert len(seen) == 2 and seen[0] == seen[1]
    user, point, raw = seen[0]
    assert user == User("ada", T0) and point == Point(1, 2)
    assert raw == {"t": "2025-01-01T12:00:00.000Z"}


async def test_oversized_result_fails_without_retry_naming_step_and_size() -> None:
    async def handler(ctx: Context) -> str:
        return await step.do("big", lambda: "x" * 500)

    d = Driver(job_of(handler), max_payload=100)
    done = await d.run()
    (failed,) = of(d, h.StepFailed)
    assert failed.retry_at is None and failed.error.type == "PayloadTooLarge"
    assert "'big'" in failed.error.message and "502 bytes" in failed.error.message
    assert d.executed == [("big", 1)]
    assert isinstance(done, Finished) and isinstance(done.entry, h.RunFailed)


async def test_oversized_output_fails_the_run() -> None:
    async def big(ctx: Context) -> str:
        return "y" * 500

    d = Driver(job_of(big), max_payload=100)
    await d.run()
    assert of(d, h.RunFailed)[0].error.type == "PayloadTooLarge"


# -- recorded values ----------------------------------------------------------------


async def test_values_are_recorded_before_the_next_entry_and_replayed() -> None:
    seen: list[tuple[Any, ...]] = []

    async def handler(ctx: Context) -> None:
        values = (ctx.now(), ctx.uuid(), ctx.random())
        await step.do("a", lambda: 1)
        seen.append((*values, ctx.now()))
        await step.sleep("nap", 60)

    d = Driver(job_of(handler))
    parked = await d.advance()
    assert isinstance(parked, Park)
    assert d.kinds == ["values_recorded", "step_completed", "values_recorded", "timer_set"]
    first, second = of(d, h.ValuesRecorded)
    assert len(first.values) == 3 and len(second.values) == 1
    now, uid, rnd, later = seen[0]
    assert now == T0 and later == T0 and 0 <= rnd < 1 and uid.version == 4
    assert first.values == [format_time(now), str(uid), rnd]
    await d.crash()
    await d.advance()
    assert seen[1] == seen[0]
    assert len(of(d, h.ValuesRecorded)) == 2


async def test_values_read_in_the_function_lane_are_written_with_the_output() -> None:
    async def handler(ctx: Context) -> str:
        return str(ctx.uuid())

    d = Driver(job_of(handler))
    await d.run()
    assert d.kinds == ["values_recorded", "run_completed"]
    assert plain(of(d, h.RunCompleted)[0].output) == of(d, h.ValuesRecorded)[0].values[0]


# -- non-determinism ------------------------------------------------------------------


async def v1(ctx: Context) -> str:
    await step.do("a", lambda: 1)
    await step.sleep("nap", 60)
    await step.do("b", lambda: 2)
    return "v1"


async def v2_renamed(ctx: Context) -> str:
    await step.do("a", lambda: 1)
    await step.do("zzz", lambda: 2)
    return "v2"


async def v2_other_atom(ctx: Context) -> str:
    await step.do("a", lambda: 1)
    await step.wait_for_event("nap", type="go")
    return "v2"


async def v2_shorter(ctx: Context) -> str:
    return "v2"


async def v2_raises(ctx: Context) -> str:
    await step.do("a", lambda: 1)
    raise KeyError("plugin")


@pytest.mark.parametrize(
    ("handler", "step_id", "words"),
    [
        (v2_renamed, "zzz", ["step #2", "step.sleep('nap')", "step.do('zzz')"]),
        (v2_other_atom, "nap", ["step #2", "step.wait_for_event('nap')"]),
        (v2_shorter, "a", ["returned", "step.do('a')", "#1"]),
        (v2_raises, "nap", ["raised KeyError", "step.sleep('nap')", "#2"]),
    ],
)
async def test_changed_code_blocks_once_and_compatible_code_resumes(
    handler: Any, step_id: str, words: list[str]
) -> None:
    d = Driver(job_of(v1))
    assert isinstance(await d.advance(), Park)
    before = len(d.log)
    d.job = job_of(handler)
    await d.crash()
    blocked = await d.advance()
    assert isinstance(blocked, Blocked) and blocked.step == step_id
    assert blocked.error.type == "NonDeterminismError"
    for word in words:
        assert word in blocked.error.message
    (entry,) = of(d, h.RunBlocked)
    assert (entry.step, entry.error) == (step_id, blocked.error)
    assert len(d.log) == before + 1
    # replayed again (an event woke it): not written twice
    d.event("noise")
    await d.crash()
    assert isinstance(await d.advance(), Blocked)
    assert len(of(d, h.RunBlocked)) == 1
    # compatible code deployed: the run resumes where it parked
    d.job = job_of(v1)
    await d.crash()
    done = await d.run()
    assert isinstance(done, Finished) and plain(getattr(done.entry, "output", None)) == "v1"
    assert d.kinds[-3:] == ["sleep_completed", "step_completed", "run_completed"]


async def test_a_blocked_replay_records_no_values() -> None:
    async def curious(ctx: Context) -> str:
        await step.do("a", lambda: 1)
        ctx.now()
        await step.do("other", lambda: 2)
        return "x"

    async def original(ctx: Context) -> str:
        await step.do("a", lambda: 1)
        await step.sleep("nap", 60)
        return str(ctx.uuid())

    d = Driver(job_of(original))
    await d.advance()
    d.job = job_of(curious)
    await d.crash()
    assert isinstance(await d.advance(), Blocked)
    assert d.kinds == ["step_completed", "timer_set", "run_blocked"]
    d.job = job_of(original)
    await d.crash()
    await d.run()
    (values,) = of(d, h.ValuesRecorded)
    assert plain(of(d, h.RunCompleted)[0].output) == values.values[0]
    assert len(values.values[0]) == 36


async def test_next_after_blocked_repeats_the_decision() -> None:
    d = Driver(job_of(v1))
    await d.advance()
    d.job = job_of(v2_renamed)
    await d.crash()
    first = await d.advance()
    again = await d.replay.next(None)
    assert isinstance(again, Blocked) and again == first
    assert len(of(d, h.RunBlocked)) == 1


# -- input and misuse --------------------------------------------------------------


class StructIn(msgspec.Struct):
    envs: list[str]
    at: datetime


@dataclasses.dataclass
class DataIn:
    envs: list[str]
    count: int = 1


class DictIn(TypedDict):
    envs: list[str]


async def takes_struct(ctx: Context, input: StructIn) -> str:
    return f"{type(input).__name__}:{input.envs}:{input.at.year}"


async def takes_dataclass(ctx: Context, input: DataIn) -> str:
    return f"{type(input).__name__}:{input.envs}:{input.count}"


async def takes_typeddict(ctx: Context, input: DictIn) -> str:
    return f"{type(input).__name__}:{input['envs']}"


@pytest.mark.parametrize(
    ("handler", "good", "expected"),
    [
        (takes_struct, {"envs": ["a"], "at": "2025-01-01T00:00:00Z"}, "StructIn:['a']:2025"),
        (takes_dataclass, {"envs": ["a", "b"]}, "DataIn:['a', 'b']:1"),
        (takes_typeddict, {"envs": []}, "dict:[]"),
    ],
)
async def test_input_is_converted_or_refused(handler: Any, good: Any, expected: str) -> None:
    d = Driver(job_of(handler), good)
    await d.run()
    assert plain(of(d, h.RunCompleted)[0].output) == expected
    bad = Driver(job_of(handler), {"envs": "not-a-list"})
    done = await bad.run()
    assert isinstance(done, Finished) and isinstance(done.entry, h.RunFailed)
    assert done.entry.error.type == "InputError"
    assert "'t'" in done.entry.error.message and "envs" in done.entry.error.message


async def test_next_without_start_is_a_driver_error() -> None:
    d = Driver(job_of(v1), start=False)
    with pytest.raises(RuntimeError, match="no start"):
        await d.advance()


async def test_plugins_are_reachable_and_missing_ones_are_named() -> None:
    async def handler(ctx: Context) -> str:
        return str(ctx.plugins.deployer)

    job = job_of(handler)
    replay = Replay(job, "r1", clock=FakeClock(), entropy=entropy, plugins=None)
    replay.ingest(h.Message(1, "r1", "in", "start", h.Start(job="t")))
    done = await replay.next()
    assert isinstance(done, Blocked) and done.error.type == "AttributeError"
    assert "no plugin named 'deployer'" in done.error.message


# -- the function lane ----------------------------------------------------------------


async def test_function_lane_times_out_and_points_to_step_atoms() -> None:
    async def stuck(ctx: Context) -> None:
        await asyncio.Event().wait()

    d = Driver(job_of(stuck, timeout=0.02))
    done = await d.run()
    assert isinstance(done, Finished) and isinstance(done.entry, h.RunFailed)
    assert done.entry.error.type == "FunctionTimeout"
    assert "step.do(" in done.entry.error.message and "0.02s" in done.entry.error.message
    assert d.unscheduled == []  # no timer was ever set, so none is purged


async def test_function_lane_limit_ends_at_the_first_atom() -> None:
    async def slow_step() -> str:
        await asyncio.sleep(0.05)
        return "slow"

    async def handler(ctx: Context) -> str:
        return await step.do("s", slow_step)

    d = Driver(job_of(handler, timeout=0.01))
    await d.run()
    assert plain(of(d, h.RunCompleted)[0].output) == "slow"


# -- resume == replay -------------------------------------------------------------------


async def test_a_fresh_core_reaches_the_live_state_at_every_park() -> None:
    async def handler(ctx: Context) -> list[Any]:
        out: list[Any] = [ctx.now().isoformat()]
        for env in ("dev", "prod"):
            out.append(await step.do(f"deploy:{env}", flaky(1), retries=RetryPolicy(delay="5s")))
            await step.sleep("cool-down", "10m")
            out.append(await step.wait_for_event("approve", type="ok", timeout="1h"))
        return out

    d = Driver(job_of(handler))
    parks = 0
    while not isinstance(decision := await d.advance(), Finished):
        assert isinstance(decision, Park)
        parks += 1
        fresh, appends = await replay_fresh(d)
        assert appends == []
        assert fresh == Park(
            decision.step, tuple(dataclasses.replace(t, rearm=True) for t in decision.timers)
        )
        if decision.step.startswith("approve"):
            d.event("ok", {"by": decision.step})
        else:
            d.tick((decision.timers[0].fire_at - d.clock()).total_seconds())
    assert parks == 6
    fresh, appends = await replay_fresh(d)
    assert fresh == decision and appends == []
    assert plain(of(d, h.RunCompleted)[0].output)[1:] == [
        "ok",
        {"by": "approve"},
        "ok",
        {"by": "approve#2"},
    ]


async def test_an_input_type_changed_under_a_running_run_blocks_it() -> None:
    async def loose(ctx: Context, input: Any) -> str:
        await step.do("a", lambda: 1)
        await step.sleep("nap", 60)
        return "loose"

    d = Driver(job_of(loose), {"envs": "dev"})
    await d.advance()
    d.job = job_of(takes_struct)
    await d.crash()
    blocked = await d.advance()
    assert isinstance(blocked, Blocked) and blocked.step == "a"
    assert "does not fit" in blocked.error.message
    assert d.kinds[-1] == "run_blocked"


async def test_values_read_in_another_order_block_the_run() -> None:
    async def first(ctx: Context) -> None:
        ctx.uuid()
        await step.sleep("nap", 60)

    async def reordered(ctx: Context) -> None:
        ctx.random()
        await step.sleep("nap", 60)

    d = Driver(job_of(first))
    assert isinstance(await d.advance(), Park)
    d.job = job_of(reordered)
    await d.crash()
    blocked = await d.advance()
    assert isinstance(blocked, Blocked) and blocked.step == "nap"
    assert "ctx.random()" in blocked.error.message and "value #1" in blocked.error.message
