"""Regression tests for the promises an adversarial review broke (issue 9).

Each test names the bug it pins; each failed on the main of 2026-11-28.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from jetlane import (
    Client,
    Context,
    Log,
    Names,
    NonRetryableError,
    OrchestratorOnly,
    RetryPolicy,
    StepFailed,
    define_job,
    step,
)
from jetlane import wire as h
from jetlane._core.durations import parse_time
from jetlane.embedded import EmbeddedNats

from .helpers import StartRunner, eventually
from .processes import RunnerProcess, executions

ONCE = RetryPolicy(limit=0)


async def journal(client: Client, run_id: str) -> list[h.Message]:
    return [m async for m in client.history(run_id)]


async def settled(log: Log) -> bool:
    """The runners' consumer has nothing pending or in flight."""
    info = await log.js.consumer_info(log.names.stream, log.names.consumer)
    return int(info.num_pending or 0) == 0 and int(info.num_ack_pending or 0) == 0


def outcomes_after(history: list[h.Message], seq: int) -> list[str]:
    return [
        m.body.step
        for m in history
        if m.seq > seq and isinstance(m.body, h.StepCompleted | h.StepFailed)
    ]


# -- 1, 2: a cancel or pause stored anywhere stops the next step --------------------


def chain(n: int, seconds: float, started: list[tuple[str, float]]) -> Any:
    async def handler(ctx: Context) -> int:
        for i in range(n):

            async def work(i: int = i) -> int:
                started.append((f"s{i}", time.time()))
                await asyncio.sleep(seconds)
                return i

            await step.do(f"s{i}", work)
        return n

    return handler


async def test_bug1_cancel_wins_with_three_runners(
    client: Client, start_runner: StartRunner
) -> None:
    started: list[tuple[str, float]] = []
    job = define_job(name="chain30", handler=chain(30, 0.15, started), register=False)
    for _ in range(3):
        await start_runner([job])
    await client.start("chain30", run_id="cx1")
    await eventually(lambda: _true(len(started) >= 5), timeout=20, what="5 steps")
    assert await client.cancel("cx1", "stop")
    status = await _ended(client, "cx1")
    assert status.status == "cancelled"
    history = await journal(client, "cx1")
    cancel_seq = next(m.seq for m in history if isinstance(m.body, h.Cancel))
    # one step may have been in flight when the cancel was stored; no other outcome
    assert len(outcomes_after(history, cancel_seq)) <= 1
    assert len(started) <= len([m for m in history if m.kind == "step_completed"]) + 1


async def test_bug2_pause_holds_the_next_step_until_resume(
    client: Client, start_runner: StartRunner
) -> None:
    started: list[tuple[str, float]] = []
    job = define_job(name="chain3", handler=chain(3, 0.5, started), register=False)
    await start_runner([job])
    await client.start("chain3", run_id="px1")
    await eventually(lambda: _true(len(started) == 1), timeout=20, what="s0 to start")
    assert await client.pause("px1")
    await eventually(
        lambda: _status_is(client, "px1", lambda s: s.step == "s0" and s.paused),
        what="s0's outcome recorded while paused",
    )
    await eventually(lambda: settled(client.log), what="the pause to be handled")
    assert [s for s, _ in started] == ["s0"]  # s1 did not start
    history = await journal(client, "px1")
    pause_seq = next(m.seq for m in history if isinstance(m.body, h.Pause))
    assert outcomes_after(history, pause_seq) in ([], ["s0"])
    assert await client.resume("px1")
    assert await client.result("px1", timeout=20) == 3
    resumed_at = next(m for m in await journal(client, "px1") if isinstance(m.body, h.Resume))
    s1_started = dict(started)["s1"]
    assert s1_started >= parse_time(resumed_at.time).timestamp() - 0.01


# -- 3: values are durable before a step that may see them starts -----------------


@pytest.mark.slow
async def test_bug3_uuid_key_survives_a_sigkill_mid_step(
    nats_server: EmbeddedNats, names: Names, client: Client, tmp_path: Path
) -> None:
    exec_log = tmp_path / "executions.txt"
    procs = [RunnerProcess(nats_server.url, names, exec_log, tag="a")]
    try:
        await client.start("keyed", {"seconds": 30}, run_id="k1")
        await eventually(
            lambda: _true(any(e.startswith("k1/charge=") for e in executions(exec_log))),
            timeout=20,
            what="the charge to start",
        )
        procs[0].kill()
        (first,) = executions(exec_log)
        procs.append(RunnerProcess(nats_server.url, names, exec_log, tag="b"))
        await eventually(
            lambda: _true(len(executions(exec_log)) == 2), timeout=30, what="the retry"
        )
        second = executions(exec_log)[1]
        assert first == second  # the same key on the retry, on another runner
        values = [m.body for m in await journal(client, "k1") if m.kind == "values_recorded"]
        assert [v.values for v in values] == [[first.split("=", 1)[1]]]
    finally:
        for proc in procs:
            proc.kill()


# -- 4: ctx.now()/uuid() inside a step function --------------------------------------


async def test_bug4_recorded_values_inside_a_step_fail_clearly(
    client: Client, start_runner: StartRunner
) -> None:
    async def handler(ctx: Context) -> str:
        try:
            await step.do("inside", lambda: str(ctx.uuid()), retries=RetryPolicy(limit=5))
        except StepFailed as exc:
            return exc.type
        return "no error"

    await start_runner([define_job(name="inside-now", handler=handler, register=False)])
    await client.start("inside-now", run_id="in1")
    assert await client.result("in1", timeout=20) == OrchestratorOnly.__name__
    history = await journal(client, "in1")
    failed = [m.body for m in history if isinstance(m.body, h.StepFailed)]
    assert len(failed) == 1 and failed[0].retry_at is None  # not retried: a code error
    assert "call it in the handler" in failed[0].error.message
    assert not any(m.kind == "values_recorded" for m in history)


# -- 5: a recorded step never runs again, whatever is redelivered ------------------


async def test_bug5_redelivered_starts_never_rerun_recorded_steps(
    client: Client, log: Log, start_runner: StartRunner
) -> None:
    ran: list[str] = []

    async def handler(ctx: Context) -> int:
        await step.do("first", lambda: ran.append(ctx.run_id))
        return 1

    job = define_job(name="once-only", handler=handler, register=False)
    runner = await start_runner([job])
    for i in range(5):
        await client.start("once-only", run_id=f"r5-{i}")
    for i in range(5):
        assert await client.result(f"r5-{i}", timeout=20) == 1
    assert sorted(ran) == [f"r5-{i}" for i in range(5)]
    # (a) the consumer deleted and re-created: every stored start is delivered again
    runner.stop()
    await log.js.delete_consumer(log.names.stream, log.names.consumer)
    await start_runner([job])
    # (b) a raw second start, without the create-once headers
    await log.publish_input("r5-0", h.Start(job="once-only"))
    await eventually(lambda: settled(log), what="the redeliveries to be handled")
    assert sorted(ran) == [f"r5-{i}" for i in range(5)]


# -- 6: sync step functions run off the loop --------------------------------------


async def test_bug6_a_blocking_step_times_out_and_others_keep_moving(
    client: Client, start_runner: StartRunner
) -> None:
    release = threading.Event()

    def blocking() -> str:
        release.wait(10)
        return "late"

    async def stuck(ctx: Context) -> str:
        try:
            return await step.do("block", blocking, timeout=0.5, retries=ONCE)
        except StepFailed as exc:
            return exc.type

    async def quick(ctx: Context) -> str:
        return await step.do("q", lambda: "quick")

    await start_runner(
        [
            define_job(name="stuck", handler=stuck, register=False),
            define_job(name="quick", handler=quick, register=False),
        ]
    )
    await client.start("stuck", run_id="b6")
    # while the blocking call holds its thread, another run completes on the same runner
    await client.start("quick", run_id="q6")
    assert await client.result("q6", timeout=10) == "quick"
    assert await client.result("b6", timeout=10) == "StepTimeout"
    release.set()


async def test_a_sync_lambda_that_needs_the_loop_fails_clearly_and_coroutines_work(
    client: Client, start_runner: StartRunner
) -> None:
    async def fetch(n: int) -> int:
        return n

    async def handler(ctx: Context) -> list[Any]:
        got: list[Any] = [await step.do("coro", lambda: fetch(1))]
        try:
            await step.do("gather", lambda: asyncio.gather(), retries=ONCE)
        except StepFailed as exc:
            got.append(exc.type)
            got.append("async def" in exc.message)
        return got

    await start_runner([define_job(name="loop-bound", handler=handler, register=False)])
    await client.start("loop-bound", run_id="lb1")
    assert await client.result("lb1", timeout=10) == [1, "NonRetryableError", True]


# -- 7: an input stored before the start ------------------------------------------


async def test_bug7_an_event_before_the_start_waits_for_the_run(
    client: Client, log: Log, start_runner: StartRunner
) -> None:
    async def waiter(ctx: Context) -> Any:
        return await step.wait_for_event("w", type="early", timeout="1m")

    await start_runner([define_job(name="early-bird", handler=waiter, register=False)])
    await log.publish_input("e7", h.Event(type="early", payload={"n": 1}))
    await eventually(lambda: settled(log), what="the early event to be handled")
    handle = await client.start("early-bird", run_id="e7")
    assert await handle.result(timeout=10) == {"n": 1}
    dead = [m async for m in log.read_raw(log.names.dead_letter("e7"))]
    assert dead == []


# -- 8: runs nobody can advance hold no consumer capacity -------------------------


async def test_bug8_unserved_and_blocked_runs_do_not_freeze_the_pool(
    client: Client, log: Log, start_runner: StartRunner
) -> None:
    async def served(ctx: Context) -> str:
        return await step.do("s", lambda: "ok")

    served_job = define_job(name="served", handler=served, register=False)
    runner = await start_runner([served_job], max_ack_pending=5)
    for i in range(10):
        await client.start("nobody-serves", run_id=f"u8-{i}")
    await eventually(lambda: settled(log), what="unserved runs to let go of the consumer")
    await client.start("served", run_id="s8")
    assert await client.result("s8", timeout=10) == "ok"
    status = await client.status("u8-0")
    assert status.status == "queued" and "no runner serves" in (status.detail or "")

    async def later(ctx: Context) -> str:
        return await step.do("l", lambda: "served at last")

    await start_runner([define_job(name="nobody-serves", handler=later, register=False)])
    for i in range(10):
        assert await client.result(f"u8-{i}", timeout=20) == "served at last"
    assert runner.metrics.value("jetlane_steps_started_total", job="served") >= 1


async def test_bug8_a_blocked_run_waits_for_fixed_code_without_holding_capacity(
    client: Client, log: Log, start_runner: StartRunner
) -> None:
    async def v1(ctx: Context) -> str:
        await step.do("a", lambda: 1)
        await step.sleep("nap", 0.2)
        return "v1"

    async def v2_bad(ctx: Context) -> str:
        await step.do("renamed", lambda: 1)
        return "bad"

    first = await start_runner([define_job(name="evolving", handler=v1, register=False)])
    await client.start("evolving", run_id="bl8")
    await eventually(
        lambda: _status_is(client, "bl8", lambda s: s.status == "sleeping"), what="sleep"
    )
    first.stop()
    bad = await start_runner([define_job(name="evolving", handler=v2_bad, register=False)])
    await eventually(
        lambda: _status_is(client, "bl8", lambda s: s.status == "blocked"), what="blocked"
    )
    await eventually(lambda: settled(log), what="the blocked run to let go of the consumer")
    for i in range(3):  # inputs to a blocked run: no new run_blocked entry each time
        await client.send_event("bl8", "poke", i)
    await eventually(lambda: settled(log), what="the events to be handled")
    history = await journal(client, "bl8")
    assert len([m for m in history if m.kind == "run_blocked"]) == 1
    # replayed once per input, not in a loop (a wake-up of its own would spin it)
    assert bad.metrics.value("jetlane_sessions_started_total") < 20
    await start_runner([define_job(name="evolving", handler=v1, register=False)])
    assert await client.result("bl8", timeout=20) == "v1"


# -- 11: every journal entry is bounded --------------------------------------------


async def test_bug11_a_huge_step_error_is_recorded_cut(
    client: Client, start_runner: StartRunner
) -> None:
    calls: list[int] = []

    def huge() -> None:
        calls.append(1)
        raise ValueError("x" * 2_000_000)

    async def handler(ctx: Context) -> str:
        try:
            await step.do("huge", huge, retries=ONCE)
        except StepFailed as exc:
            return exc.message[-40:]
        return "?"

    await start_runner([define_job(name="huge-error", handler=handler, register=False)])
    await client.start("huge-error", run_id="h11")
    assert "characters cut]" in await client.result("h11", timeout=20)
    assert calls == [1]


# -- 12, 13: only time ends a sleep or a wait -----------------------------------------


async def test_bug12_13_forged_and_stray_timers_end_nothing(
    client: Client, log: Log, start_runner: StartRunner
) -> None:
    async def patient(ctx: Context) -> Any:
        await step.sleep("long-nap", "1h")
        return "woke"

    async def waiter(ctx: Context) -> Any:
        return await step.wait_for_event("w", type="go", timeout="1h")

    await start_runner(
        [
            define_job(name="patient", handler=patient, register=False),
            define_job(name="waiter12", handler=waiter, register=False),
        ]
    )
    await client.start("patient", run_id="f12")
    await client.start("waiter12", run_id="w13")
    for run_id, waiting in (("f12", "sleeping"), ("w13", "waiting")):

        async def parked(run_id: str = run_id, waiting: str = waiting) -> bool:
            return (await client.status(run_id)).status == waiting

        await eventually(parked, what=f"{run_id} to park")
        timer_set = next(
            m.body for m in await journal(client, run_id) if isinstance(m.body, h.TimerSet)
        )
        # a publisher on .in forges the fire (or a schedule orphaned by a crash fires)
        forged = h.Timer(timer_set.timer, timer_set.step, timer_set.purpose)
        await log.publish_input(run_id, forged)
    await eventually(lambda: settled(log), what="the forged timers to be handled")
    assert (await client.status("f12")).status == "sleeping"
    assert (await client.status("w13")).status == "waiting"
    await client.send_event("w13", "go", "real")
    assert await client.result("w13", timeout=10) == "real"


# -- 14: leases never outlive their session -------------------------------------------


async def test_bug14_no_lease_is_left_behind(
    client: Client, log: Log, start_runner: StartRunner
) -> None:
    async def handler(ctx: Context, input: int) -> int:
        for i in range(3):
            await step.do(f"s{i}", lambda: asyncio.sleep(0.03))
        return input

    # heartbeats every ~30 ms: renewals race releases all the time
    await start_runner([define_job(name="leased", handler=handler, register=False)], ack_wait=0.1)
    ids = [f"ls{i}" for i in range(60)]
    await asyncio.gather(*(client.start("leased", i, run_id=r) for i, r in enumerate(ids)))
    for i, run_id in enumerate(ids):
        assert await client.result(run_id, timeout=30) == i

    async def no_leases() -> bool:
        info = await log.js.stream_info(log.names.lease_stream)
        return int(info.state.messages) == 0

    # released leases leave nothing; one left behind would live for the 5 s TTL
    await eventually(no_leases, timeout=2, what="every lease to be released")


# -- 16: nothing after the terminal entry; running while the first step runs -------


async def test_bug16_no_input_after_the_end_and_running_status(
    client: Client, log: Log, start_runner: StartRunner
) -> None:
    gate = asyncio.Event()

    async def napper(ctx: Context) -> str:
        await step.sleep("nap", 0.5)
        return "rested"

    async def gated(ctx: Context) -> str:
        async def wait() -> str:
            await gate.wait()
            return "opened"

        return await step.do("gate", wait)

    await start_runner(
        [
            define_job(name="napper16", handler=napper, register=False),
            define_job(name="gated16", handler=gated, register=False),
        ]
    )
    await client.start("gated16", run_id="g16")
    await eventually(
        lambda: _status_is(client, "g16", lambda s: s.status == "running"),
        what="running while the first step runs",
    )
    gate.set()
    await client.start("napper16", run_id="n16")
    await eventually(
        lambda: _status_is(client, "n16", lambda s: s.status == "sleeping"), what="sleep"
    )
    assert await client.cancel("n16")
    await _ended(client, "n16")
    fire_at = parse_time(
        next(m.body for m in await journal(client, "n16") if isinstance(m.body, h.TimerSet)).fire_at
    )
    # the in-memory timer's moment passes (a deadline, not a synchronisation)
    await eventually(
        lambda: _true(datetime.now(UTC).timestamp() > fire_at.timestamp() + 0.5),
        what="the sleep's fire time to pass",
    )
    await eventually(lambda: settled(log), what="anything late to be handled")
    history = await log.read("n16")
    end = next(i for i, m in enumerate(history) if isinstance(m.body, h.TERMINAL))
    assert history[end + 1 :] == []


# -- (iv) BaseException from user code --------------------------------------------------


async def test_system_exit_and_cancelled_error_from_user_code_end_cleanly(
    client: Client, start_runner: StartRunner
) -> None:
    async def exits(ctx: Context) -> None:
        await step.do("ok", lambda: 1)
        raise SystemExit(3)

    async def cancels(ctx: Context) -> str:
        async def fn() -> None:
            raise asyncio.CancelledError

        try:
            await step.do("c", fn, retries=RetryPolicy(limit=1, delay=0.01))
        except StepFailed as exc:
            return f"{exc.type} after {exc.attempts}"
        return "?"

    await start_runner(
        [
            define_job(name="exits", handler=exits, register=False),
            define_job(name="cancels", handler=cancels, register=False),
        ]
    )
    await client.start("exits", run_id="x1")
    await client.start("cancels", run_id="x2")
    status = await _ended(client, "x1")
    assert status.status == "failed" and status.error is not None
    assert status.error.type == "SystemExit"
    assert await client.result("x2", timeout=10) == "CancelledError after 2"


async def test_nonretryable_still_fails_at_once(client: Client, start_runner: StartRunner) -> None:
    def boom() -> None:
        raise NonRetryableError("no")

    async def handler(ctx: Context) -> str:
        try:
            await step.do("b", boom)
        except StepFailed as exc:
            return str(exc.attempts)
        return "?"

    await start_runner([define_job(name="nr", handler=handler, register=False)])
    await client.start("nr", run_id="nr1")
    assert await client.result("nr1", timeout=10) == "1"


# -- helpers ---------------------------------------------------------------------------


async def _true(value: bool) -> bool:
    return value


async def _status_is(client: Client, run_id: str, check: Callable[[Any], bool]) -> bool:
    return check(await client.status(run_id))


async def _ended(client: Client, run_id: str) -> Any:
    async def done() -> bool:
        return (await client.status(run_id)).done

    await eventually(done, timeout=30, what=f"{run_id} to end")
    return await client.status(run_id)


# -- 17: a stored start is handed on at once, not at the end of a fetch --------------


async def test_bug17_the_puller_hands_each_message_on_as_it_arrives(log: Log) -> None:
    from jetlane._nats.pull import Puller

    await log.runner_consumer(ack_wait=5.0, max_ack_pending=100)
    handed: list[tuple[str, bool]] = []  # (subject, was the pull request still open?)
    pulling: asyncio.Task[None] | None = None

    async def on_message(msg: Any) -> None:
        assert pulling is not None
        handed.append((msg.subject, not pulling.done()))
        await msg.ack()

    async def recreate() -> None:
        raise AssertionError("the consumer exists")

    # a request for 100 that lingers 30 s: fetch() would sit on the first message
    puller = Puller(log.nc, log.names.stream, log.names.consumer, on_message, recreate, expires=30)
    await puller.start()
    try:
        pulling = asyncio.create_task(puller.pull(100))
        await log.publish_input("p17", h.Start(job="x"))
        await eventually(lambda: _true(bool(handed)), what="the start to be handed on")
        assert handed == [(log.names.inbox("p17"), True)]
        pulling.cancel()
    finally:
        await puller.stop()


# -- issue 11, point 3: non-determinism shows at once when every wake-up replays -----


async def test_replay_always_surfaces_non_determinism_at_the_next_wake_up(
    client: Client, start_runner: StartRunner
) -> None:
    calls = iter(range(1000))

    async def nondet(ctx: Context) -> str:
        await step.do(f"fetch-{next(calls)}", lambda: 1)  # e.g. a name built from now()
        await step.sleep("nap", 0.2)
        return "done"

    job = define_job(name="nondet", handler=nondet, register=False)
    await start_runner([job], cache_size=0)  # what jetlane dev and --replay-always run
    await client.start("nondet", run_id="nd1")

    async def blocked() -> bool:
        return (await client.status("nd1")).status == "blocked"

    await eventually(blocked, what="the run to block at its first replay")
    status = await client.status("nd1")
    assert status.error is not None and "datetime.now()" in status.error.message


def test_dev_replays_every_wake_up_unless_asked_and_the_runner_on_request() -> None:
    from jetlane.cli import _runner_config, build_parser

    parser = build_parser()
    dev = parser.parse_args(["dev"])
    assert _runner_config(dev).cache_size == 0
    assert _runner_config(parser.parse_args(["dev", "--cache-runs"])).cache_size > 0
    runner = parser.parse_args(["runner", "--jobs", "jobs"])
    assert _runner_config(runner).cache_size > 0
    assert (
        _runner_config(
            parser.parse_args(["runner", "--jobs", "jobs", "--replay-always"])
        ).cache_size
        == 0
    )
