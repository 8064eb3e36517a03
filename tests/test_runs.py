"""Every atom end to end: a real nats-server, an in-process runner, the client."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import msgspec
import pytest

from jetlane import (
    Client,
    Context,
    EventTimeout,
    InputError,
    Log,
    NonRetryableError,
    RetryPolicy,
    RunAlreadyExists,
    RunFailedError,
    RunNotFound,
    StepFailed,
    define_job,
    step,
)
from jetlane import wire as h

from .helpers import StartRunner, eventually

FAST = RetryPolicy(limit=3, delay=0.05, backoff="exponential")


async def kinds(client: Client, run_id: str) -> list[str]:
    return [m.kind async for m in client.history(run_id)]


async def journal(client: Client, run_id: str) -> list[Any]:
    return [m.body async for m in client.history(run_id) if m.direction == "out"]


class Numbers(msgspec.Struct):
    values: list[int]


async def add_all(ctx: Context, input: Numbers) -> int:
    total = 0
    for value in input.values:

        def add(v: int = value, t: int = total) -> int:
            return t + v

        total = await step.do("add", add)
    return total


async def test_step_do_records_each_step_once(client: Client, start_runner: StartRunner) -> None:
    job = define_job(name="add", handler=add_all, register=False)
    await start_runner([job])
    await client.start("add", {"values": [1, 2, 3]}, run_id="sum")
    assert await client.result("sum", timeout=10) == 6
    entries = await journal(client, "sum")
    assert [getattr(e, "step", None) for e in entries] == ["add", "add#2", "add#3", None]
    status = await client.status("sum")
    assert status.status == "completed" and status.output == 6


async def test_retries_with_backoff_then_success(client: Client, start_runner: StartRunner) -> None:
    calls: list[int] = []

    async def flaky(ctx: Context) -> str:
        def attempt() -> str:
            calls.append(1)
            if len(calls) < 3:
                raise ConnectionError(f"transient {len(calls)}")
            return "ok"

        return await step.do("flaky", attempt, retries=FAST)

    await start_runner([define_job(name="flaky", handler=flaky, register=False)])
    await client.start("flaky", run_id="f1")
    assert await client.result("f1", timeout=15) == "ok"
    assert len(calls) == 3
    failed = [e for e in await journal(client, "f1") if type(e).__name__ == "StepFailed"]
    assert [f.attempt for f in failed] == [1, 2]
    assert all(f.retry_at is not None for f in failed)
    assert failed[0].error.type == "ConnectionError"


async def test_non_retryable_fails_once_and_step_failed_is_catchable(
    client: Client, start_runner: StartRunner
) -> None:
    calls: list[int] = []

    async def strict(ctx: Context) -> str:
        def attempt() -> None:
            calls.append(1)
            raise NonRetryableError("bad request")

        try:
            await step.do("call", attempt, retries=FAST)
        except StepFailed as exc:
            return f"caught {exc.step} after {exc.attempts}: {exc.message}"
        return "not reached"

    await start_runner([define_job(name="strict", handler=strict, register=False)])
    await client.start("strict", run_id="s1")
    assert await client.result("s1", timeout=10) == "caught call after 1: bad request"
    assert calls == [1]


async def test_exhausted_retries_fail_the_run(client: Client, start_runner: StartRunner) -> None:
    async def doomed(ctx: Context) -> None:
        await step.do("boom", lambda: 1 / 0, retries=RetryPolicy(limit=1, delay=0.01))

    await start_runner([define_job(name="doomed", handler=doomed, register=False)])
    await client.start("doomed", run_id="d1")
    with pytest.raises(RunFailedError) as info:
        await client.result("d1", timeout=10)
    assert info.value.type == "StepFailed"
    assert "boom" in info.value.message and "2 attempt" in info.value.message
    assert (await client.status("d1")).status == "failed"


async def test_step_timeout_fails_the_attempt_and_retries(
    client: Client, start_runner: StartRunner
) -> None:
    attempts: list[int] = []

    async def hang(ctx: Context) -> str:
        async def slow() -> str:
            attempts.append(1)
            if len(attempts) == 1:
                await asyncio.sleep(30)
            return "second"

        return await step.do("slow", slow, timeout=0.2, retries=FAST)

    await start_runner([define_job(name="hang", handler=hang, register=False)])
    await client.start("hang", run_id="h1")
    assert await client.result("h1", timeout=10) == "second"
    failed = [e for e in await journal(client, "h1") if type(e).__name__ == "StepFailed"]
    assert failed[0].error.type == "StepTimeout" and "0.2s" in failed[0].error.message


async def test_sleep_parks_without_a_session_and_resumes(
    client: Client, start_runner: StartRunner
) -> None:
    async def napper(ctx: Context) -> str:
        await step.sleep("nap", "1s")
        return "rested"

    runner = await start_runner([define_job(name="nap", handler=napper, register=False)])
    await client.start("nap", run_id="n1")

    async def sleeping() -> bool:
        return (await client.status("n1")).status == "sleeping"

    await eventually(sleeping, what="run to sleep")
    await eventually(lambda: _no_session(runner, "n1"), what="session to end while parked")
    assert await client.result("n1", timeout=10) == "rested"
    assert (await kinds(client, "n1")).count("sleep_completed") == 1


async def test_a_fast_timer_shows_at_most_once_in_the_history(
    client: Client, start_runner: StartRunner
) -> None:
    async def napper(ctx: Context) -> int:
        for _ in range(5):
            await step.sleep("nap", 0.2)  # in-memory timer and durable schedule race
        return 5

    await start_runner([define_job(name="naps", handler=napper, register=False)])
    await client.start("naps", run_id="naps1")
    assert await client.result("naps1", timeout=20) == 5
    messages = [m async for m in client.history("naps1")]
    timer_sets = [m.body.timer for m in messages if isinstance(m.body, h.TimerSet)]
    fired = [m.body.timer for m in messages if isinstance(m.body, h.Timer)]
    assert len(timer_sets) == 5 == len(set(timer_sets))
    assert len(fired) == len(set(fired)) and set(fired) <= set(timer_sets)
    assert [m.kind for m in messages].count("sleep_completed") == 5


async def _no_session(runner: Any, run_id: str) -> bool:
    return run_id not in runner._sessions


async def test_sleep_until(client: Client, start_runner: StartRunner) -> None:
    async def until(ctx: Context) -> str:
        wake = ctx.now() + timedelta(milliseconds=400)
        await step.sleep_until("alarm", wake)
        return "awake"

    await start_runner([define_job(name="until", handler=until, register=False)])
    await client.start("until", run_id="u1")
    assert await client.result("u1", timeout=10) == "awake"
    assert "values_recorded" in await kinds(client, "u1")


async def wait_job(ctx: Context) -> Any:
    try:
        return await step.wait_for_event("approval", type="approval", timeout="2s")
    except EventTimeout:
        return "timed out"


async def test_event_sent_before_the_wait_is_returned(
    client: Client, start_runner: StartRunner
) -> None:
    async def late(ctx: Context) -> Any:
        await step.sleep("first", 0.5)
        return await step.wait_for_event("approval", type="approval", timeout="5s")

    await client.start("late", run_id="e1")
    await client.send_event("e1", "approval", {"ok": True})
    await start_runner([define_job(name="late", handler=late, register=False)])
    assert await client.result("e1", timeout=10) == {"ok": True}
    assert "wait_started" not in await kinds(client, "e1")


async def test_wait_returns_the_event_and_purges_its_timer(
    client: Client, start_runner: StartRunner
) -> None:
    await start_runner([define_job(name="wait", handler=wait_job, register=False)])
    await client.start("wait", run_id="w1")

    async def waiting() -> bool:
        return (await client.status("w1")).status == "waiting"

    await eventually(waiting, what="run to wait")
    status = await client.status("w1")
    assert status.waiting_for == "approval" and status.until is not None
    await client.send_event("w1", "approval", {"by": "ana"})
    assert await client.result("w1", timeout=10) == {"by": "ana"}


async def test_wait_timeout_raises_event_timeout(client: Client, start_runner: StartRunner) -> None:
    await start_runner([define_job(name="wait", handler=wait_job, register=False)])
    await client.start("wait", run_id="w2")
    assert await client.result("w2", timeout=10) == "timed out"
    assert "wait_timed_out" in await kinds(client, "w2")


async def test_create_once_start(client: Client) -> None:
    await client.start("anything", run_id="once")
    with pytest.raises(RunAlreadyExists):
        await client.start("anything", run_id="once")
    starts = [m for m in [m async for m in client.history("once")] if m.kind == "start"]
    assert len(starts) == 1


@dataclass
class Deploy:
    env: str
    replicas: int


async def test_input_that_does_not_convert_is_refused(client: Client) -> None:
    async def typed(ctx: Context, input: Deploy) -> str:
        return input.env

    define_job(name="typed-input-test", handler=typed)
    with pytest.raises(InputError, match="replicas"):
        await client.start("typed-input-test", {"env": "prod"}, run_id="bad-input")
    with pytest.raises(RunNotFound):
        await client.status("bad-input")


async def test_input_is_refused_by_a_remote_runner(
    client: Client, start_runner: StartRunner
) -> None:
    async def typed(ctx: Context, input: Deploy) -> str:
        return input.env

    await start_runner([define_job(name="remote-typed", handler=typed, register=False)])
    with pytest.raises(InputError, match="replicas"):
        await client.start("remote-typed", {"env": "prod", "replicas": "many"}, run_id="r-bad")
    run = await client.start("remote-typed", {"env": "prod", "replicas": 2}, run_id="r-good")
    assert await run.result(timeout=10) == "prod"


async def test_cancel_a_sleeping_run(client: Client, start_runner: StartRunner) -> None:
    async def long_nap(ctx: Context) -> None:
        await step.sleep("nap", "1h")

    await start_runner([define_job(name="long-nap", handler=long_nap, register=False)])
    await client.start("long-nap", run_id="c1")

    async def sleeping() -> bool:
        return (await client.status("c1")).status == "sleeping"

    await eventually(sleeping, what="run to sleep")
    assert await client.cancel("c1", reason="no longer needed")
    with pytest.raises(RunFailedError) as info:
        await client.result("c1", timeout=10)
    assert info.value.status == "cancelled" and "no longer needed" in info.value.message
    assert await client.cancel("c1") is False


async def test_function_lane_limit(client: Client, start_runner: StartRunner) -> None:
    async def slow(ctx: Context) -> None:
        await asyncio.sleep(30)

    await start_runner([define_job(name="slow", handler=slow, timeout=0.3, register=False)])
    await client.start("slow", run_id="fl1")
    with pytest.raises(RunFailedError) as info:
        await client.result("fl1", timeout=10)
    assert info.value.type == "FunctionTimeout" and "step" in info.value.message


async def test_function_lane_runs_once(client: Client, start_runner: StartRunner) -> None:
    async def quick(ctx: Context, input: int) -> int:
        return input * 2

    await start_runner([define_job(name="quick", handler=quick, register=False)])
    run = await client.start("quick", 21)
    assert await run.result(timeout=10) == 42


async def test_non_determinism_blocks_then_fixed_code_resumes(
    client: Client, start_runner: StartRunner
) -> None:
    async def v1(ctx: Context) -> str:
        await step.do("a", lambda: 1)
        await step.wait_for_event("go", type="go", timeout="1h")
        await step.do("b", lambda: 2)
        return "v1"

    async def v2(ctx: Context) -> str:
        await step.do("renamed", lambda: 1)
        await step.wait_for_event("go", type="go", timeout="1h")
        return "v2"

    async def v3(ctx: Context) -> str:
        await step.do("a", lambda: 1)
        await step.wait_for_event("go", type="go", timeout="1h")
        await step.do("b", lambda: 3)
        return "v3"

    first = await start_runner([define_job(name="nd", handler=v1, register=False)])
    await client.start("nd", run_id="nd1")

    async def waiting() -> bool:
        return (await client.status("nd1")).status == "waiting"

    await eventually(waiting, what="run to wait")
    first.stop()
    await eventually(lambda: _stopped(first), what="first runner to stop")
    second = await start_runner([define_job(name="nd", handler=v2, register=False)])
    await client.send_event("nd1", "go")

    async def blocked() -> bool:
        return (await client.status("nd1")).status == "blocked"

    await eventually(blocked, what="run to block")
    status = await client.status("nd1")
    assert status.error is not None and status.error.type == "NonDeterminismError"
    assert "'a'" in status.error.message and "renamed" in status.error.message
    second.stop()
    await eventually(lambda: _stopped(second), what="second runner to stop")
    await start_runner([define_job(name="nd", handler=v3, register=False)])
    assert await client.result("nd1", timeout=20) == "v3"
    assert (await kinds(client, "nd1")).count("run_blocked") == 1


async def _stopped(runner: Any) -> bool:
    return not runner.ready.is_set() and not runner._tasks


async def test_event_for_unknown_run(client: Client) -> None:
    with pytest.raises(RunNotFound):
        await client.send_event("nobody", "approval", {})


async def test_start_for_unserved_job_waits_for_a_runner(
    client: Client, start_runner: StartRunner
) -> None:
    async def later(ctx: Context) -> str:
        return "served"

    await start_runner([define_job(name="other", handler=later, register=False)])
    await client.start("later", run_id="q1")
    status = await client.status("q1")
    assert status.status == "queued"
    assert status.detail is not None and "no runner serves job 'later'" in status.detail
    await start_runner([define_job(name="later", handler=later, register=False)])
    assert await client.result("q1", timeout=20) == "served"


async def test_context_values_are_recorded_once(client: Client, start_runner: StartRunner) -> None:
    async def values(ctx: Context) -> list[str]:
        first = [str(ctx.uuid()), str(ctx.random()), ctx.now().isoformat()]
        await step.sleep("nap", 0.2)
        return [*first, str(ctx.uuid()), ctx.step_key]

    await start_runner([define_job(name="values", handler=values, register=False)])
    await client.start("values", run_id="v1")
    out = await client.result("v1", timeout=10)
    recorded = [e for e in await journal(client, "v1") if type(e).__name__ == "ValuesRecorded"]
    assert [v for e in recorded for v in e.values][:3] == [
        out[0],
        float(out[1]),
        recorded[0].values[2],
    ]
    assert out[4] == "v1/nap"


async def test_cancel_stops_a_long_chain_of_steps(
    client: Client, start_runner: StartRunner
) -> None:
    async def chain(ctx: Context) -> None:
        for _ in range(200):
            await step.do("link", lambda: asyncio.sleep(0.02))

    await start_runner([define_job(name="chain", handler=chain, register=False)])
    await client.start("chain", run_id="ch1")

    async def some_done() -> bool:
        return (await kinds(client, "ch1")).count("step_completed") >= 3

    await eventually(some_done, what="a few links")
    assert await client.cancel("ch1", reason="stop")
    with pytest.raises(RunFailedError) as info:
        await client.result("ch1", timeout=10)
    assert info.value.status == "cancelled"
    done = await kinds(client, "ch1")
    assert done[-1] == "run_cancelled"
    assert done.count("step_completed") < 200


async def test_pause_holds_a_run_and_resume_lets_it_finish(
    client: Client, start_runner: StartRunner
) -> None:
    ran: list[str] = []

    async def gated(ctx: Context) -> str:
        await step.do("prepare", lambda: ran.append("prepare"))
        await step.wait_for_event("go", type="go", timeout="1h")
        await step.do("act", lambda: ran.append("act"))
        return "acted"

    await start_runner([define_job(name="gated", handler=gated, register=False)])
    await client.start("gated", run_id="p1")

    async def waiting() -> bool:
        return (await client.status("p1")).status == "waiting"

    await eventually(waiting, what="run to wait")
    assert await client.pause("p1", reason="freeze")
    await client.send_event("p1", "go")

    async def delivered() -> bool:  # the runner has handled the pause and the event
        return await client.log.consumer_pending() == 0

    await eventually(delivered, what="the runner to handle both inputs")
    status = await client.status("p1")
    assert status.paused and status.status == "waiting"
    assert ran == ["prepare"] and "event_received" not in await kinds(client, "p1")
    assert await client.resume("p1")
    assert await client.result("p1", timeout=10) == "acted"
    assert ran == ["prepare", "act"]
    assert (await client.status("p1")).paused is False
    assert await client.pause("p1") is False  # ended: nothing sent


async def test_a_stopping_runner_hands_each_delivery_back_once(
    client: Client, log: Log, start_runner: StartRunner
) -> None:
    """A stopping runner's last pull request stays open on the server for up to a second;
    a delivery it hands back must not come straight back to it (one bounce per delivery,
    not one per free slot)."""
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> int:
        holding.set()
        await release.wait()
        return 1

    async def slow(ctx: Context) -> int:
        return await step.do("hold", hold)

    async def quick(ctx: Context) -> int:
        return await step.do("one", lambda: 1)

    jobs = [
        define_job(name="slow-drain", handler=slow, register=False),
        define_job(name="quick-drain", handler=quick, register=False),
    ]
    first = await start_runner(jobs)
    await client.start("slow-drain", run_id="drain-slow")
    await asyncio.wait_for(holding.wait(), 10)
    first.stop()  # draining the held step; its open pull request takes what comes next
    quick_ids = [f"drain-q{i}" for i in range(5)]
    for run_id in quick_ids:
        await client.start("quick-drain", run_id=run_id)
    await start_runner(jobs)
    for run_id in quick_ids:
        assert await client.result(run_id, timeout=20) == 1
    release.set()
    assert await client.result("drain-slow", timeout=20) == 1
    info = await log.js.consumer_info(log.names.stream, log.names.consumer)
    # The slow start once; each quick start at most twice (the stopping runner, the other).
    assert info.delivered.consumer_seq <= 1 + 2 * len(quick_ids), info.delivered


async def test_status_says_an_awaited_event_is_already_in_the_inbox_and_no_runner_serves_it(
    client: Client, start_runner: StartRunner
) -> None:
    async def waits(ctx: Context) -> Any:
        return await step.wait_for_event("go", type="go", timeout="1h")

    first = await start_runner([define_job(name="waits", handler=waits, register=False)])
    await client.start("waits", run_id="wi1")

    async def waiting() -> bool:
        return (await client.status("wi1")).status == "waiting"

    await eventually(waiting, what="the run to wait")
    first.stop()  # no runner serves the job now (it was renamed, say)

    async def unserved() -> bool:
        return not await client.served("waits")

    await eventually(unserved, what="the runner to stop serving the job")
    await client.send_event("wi1", "go", 1)
    status = await client.status("wi1")
    assert status.status == "waiting" and status.detail is not None
    assert "event 'go' is in its inbox" in status.detail  # not shown as still pending
    other = await start_runner([define_job(name="other", handler=waits, register=False)])

    async def marked() -> bool:
        detail = (await client.status("wi1")).detail or ""
        return "no runner serves job 'waits'" in detail

    await client.send_event("wi1", "go", 2)  # a delivery the other runner cannot serve
    await eventually(marked, what="the status to say no runner serves the job")
    assert other is not first
