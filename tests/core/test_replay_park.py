"""The parking atoms and the orders the log fixes: sleeps, waits, timers, cancels."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

from jetlane import Context, EventTimeout, step
from jetlane import wire as h
from jetlane._core.durations import format_time
from jetlane._core.replay import Execute, Finished, Park, timer_token

from .replay_driver import T0, Driver, job_of, of, plain, replay_fresh


async def napper(ctx: Context) -> str:
    await step.sleep("nap", "10m")
    return "rested"


async def waiter(ctx: Context) -> Any:
    try:
        return await step.wait_for_event("approval", type="approve", timeout="1h")
    except EventTimeout as exc:
        return f"timeout:{exc.step}:{exc.type}"


NAP = timer_token("nap", "sleep", 1)
WAIT = timer_token("approval", "wait_timeout", 1)


# -- sleep ----------------------------------------------------------------------------


async def test_sleep_sets_a_timer_and_ends_by_time_not_by_a_message() -> None:
    d = Driver(job_of(napper))
    parked = await d.advance()
    assert isinstance(parked, Park) and parked.step == "nap"
    fire_at = T0 + timedelta(minutes=10)
    assert d.schedules == {NAP: (fire_at, h.Timer(NAP, "nap", "sleep"))}
    assert of(d, h.TimerSet) == [h.TimerSet("nap", NAP, format_time(fire_at), "sleep")]
    # the fired timer only wakes the run: before fire_at it changes nothing
    d.fire(NAP)
    assert isinstance(await d.advance(), Park)
    d.clock.advance(600)
    assert isinstance(await d.advance(), Finished)
    # ended by the clock: the entry names no input (a message could be forged)
    assert of(d, h.SleepCompleted) == [h.SleepCompleted("nap", None)]


async def test_sleep_until_the_past_and_zero_sleeps_complete_at_once() -> None:
    async def handler(ctx: Context) -> str:
        await step.sleep_until("past", T0 - timedelta(days=1))
        await step.sleep_until("now", T0)
        await step.sleep("zero", 0)
        return "done"

    d = Driver(job_of(handler))
    assert isinstance(await d.advance(), Finished)
    assert d.kinds == ["sleep_completed"] * 3 + ["run_completed"]
    assert all(e.input_seq is None for e in of(d, h.SleepCompleted))
    assert d.schedules == {}


async def test_sleep_until_the_future_parks_until_then() -> None:
    async def handler(ctx: Context) -> None:
        await step.sleep_until("later", T0 + timedelta(hours=2))

    d = Driver(job_of(handler))
    await d.advance()
    assert of(d, h.TimerSet)[0].fire_at == "2025-01-01T14:00:00.000Z"


async def test_forged_early_or_stray_timers_never_end_a_sleep() -> None:
    d = Driver(job_of(napper))
    await d.advance()
    d.publish(h.Timer("sleep-1-0000000000000000", "other", "sleep"))  # nobody set it
    assert isinstance(await d.advance(), Park)
    d.fire(NAP)  # early or forged with the token read from the journal
    d.publish(h.Timer(NAP, "nap", "sleep"))
    assert isinstance(await d.advance(), Park)
    assert of(d, h.SleepCompleted) == []
    d.clock.advance(600)
    d.publish(h.Timer(NAP, "nap", "sleep"))  # the real one, then a duplicate
    d.publish(h.Timer(NAP, "nap", "sleep"))
    assert isinstance(await d.advance(), Finished)
    assert len(of(d, h.SleepCompleted)) == 1
    decision, appends = await replay_fresh(d)
    assert isinstance(decision, Finished) and appends == []


async def test_a_sleep_due_when_a_new_core_replays_it_ends_at_once() -> None:
    d = Driver(job_of(napper))
    await d.advance()
    # the timer fired while no runner held the run; a new core replays it all
    d.tick(600)
    await d.crash()
    assert isinstance(await d.advance(), Finished)
    assert d.kinds == ["timer_set", "sleep_completed", "run_completed"]


async def test_a_parked_run_found_by_a_new_core_rearms_its_timer() -> None:
    d = Driver(job_of(napper))
    await d.advance()
    d.schedules.clear()  # the schedule was lost (crash between publish and timer_set)
    await d.crash()
    parked = await d.advance()
    assert isinstance(parked, Park) and parked.timers[0].rearm
    assert d.schedules[NAP][0] == T0 + timedelta(minutes=10)
    assert isinstance(await d.run(), Finished)


async def test_repeated_sleeps_have_their_own_timers() -> None:
    async def handler(ctx: Context) -> None:
        for _ in range(3):
            await step.sleep("cool-down", "1m")

    d = Driver(job_of(handler))
    await d.run()
    sets = of(d, h.TimerSet)
    assert [t.step for t in sets] == ["cool-down", "cool-down#2", "cool-down#3"]
    assert len({t.timer for t in sets}) == 3
    assert [t.fire_at for t in sets] == [format_time(T0 + timedelta(minutes=n)) for n in (1, 2, 3)]


# -- wait_for_event -------------------------------------------------------------------


async def test_an_event_sent_before_the_wait_is_returned_at_once() -> None:
    d = Driver(job_of(waiter))
    other = d.event("other", 0)
    early = d.event("approve", {"by": "ada"})
    assert isinstance(await d.advance(), Finished)
    assert d.kinds == ["event_received", "run_completed"]
    assert of(d, h.EventReceived) == [h.EventReceived("approval", "approve", early)]
    assert plain(of(d, h.RunCompleted)[0].output) == {"by": "ada"}
    assert d.schedules == {} and other < early


async def test_an_event_after_the_wait_started_wins_and_purges_the_timer() -> None:
    d = Driver(job_of(waiter))
    parked = await d.advance()
    assert isinstance(parked, Park) and parked.timers[0].token == WAIT
    assert d.kinds == ["wait_started", "timer_set"]
    assert of(d, h.WaitStarted)[0].timeout_at == format_time(T0 + timedelta(hours=1))
    seq = d.event("approve", [1, 2])
    assert isinstance(await d.advance(), Finished)
    assert of(d, h.EventReceived)[0].input_seq == seq
    assert d.unscheduled == [WAIT, "*"] and d.schedules == {}


async def test_timeout_raises_event_timeout_in_the_handler() -> None:
    d = Driver(job_of(waiter))
    await d.run()
    assert d.kinds == ["wait_started", "timer_set", "wait_timed_out", "run_completed"]
    assert plain(of(d, h.RunCompleted)[0].output) == "timeout:approval:approve"

    async def uncaught(ctx: Context) -> None:
        await step.wait_for_event("w", type="x", timeout=5)

    d = Driver(job_of(uncaught))
    done = await d.run()
    assert isinstance(done, Finished) and isinstance(done.entry, h.RunFailed)
    assert done.entry.error.type == "EventTimeout"


async def test_event_against_timeout_is_decided_when_the_runner_looks() -> None:
    # the deadline passed with no event stored: the wait timed out; a later event stays
    d = Driver(job_of(waiter))
    await d.advance()
    d.tick(3600)
    await d.advance()
    late = d.event("approve", "late")
    assert of(d, h.WaitTimedOut) == [h.WaitTimedOut("approval", "approve", None)]
    assert plain(of(d, h.RunCompleted)[0].output) == "timeout:approval:approve"
    assert late not in {e.input_seq for e in of(d, h.EventReceived)}
    # an event stored before the runner decides wins, even past the deadline
    d = Driver(job_of(waiter))
    await d.advance()
    seq = d.event("approve", "first")
    d.tick(3600)
    await d.advance()
    assert of(d, h.EventReceived)[0].input_seq == seq
    assert plain(of(d, h.RunCompleted)[0].output) == "first"
    # a forged timeout timer before the deadline does nothing
    d = Driver(job_of(waiter))
    await d.advance()
    d.fire(WAIT)
    assert isinstance(await d.advance(), Park)
    assert of(d, h.WaitTimedOut) == []


async def test_each_event_is_consumed_once_in_stream_order() -> None:
    async def handler(ctx: Context) -> list[Any]:
        got = []
        for _ in range(3):
            got.append(await step.wait_for_event("w", type="tick", timeout="1h"))
        return got

    d = Driver(job_of(handler))
    d.event("tick", 1)
    d.event("tock", "ignored")
    d.event("tick", 1)  # an identical second send is a second event
    assert isinstance(await d.advance(), Park)
    d.event("tick", 3)
    await d.advance()
    assert [e.step for e in of(d, h.EventReceived)] == ["w", "w#2", "w#3"]
    assert plain(of(d, h.RunCompleted)[0].output) == [1, 1, 3]
    assert len({e.input_seq for e in of(d, h.EventReceived)}) == 3


async def test_the_event_a_timed_out_wait_left_goes_to_the_next_wait() -> None:
    async def handler(ctx: Context) -> Any:
        with contextlib.suppress(EventTimeout):
            await step.wait_for_event("first", type="go", timeout="1m")
        return await step.wait_for_event("second", type="go", timeout="1m")

    d = Driver(job_of(handler))
    await d.advance()
    d.tick(60)
    assert isinstance(await d.advance(), Park)  # first timed out, second waits
    seq = d.event("go", "kept")
    await d.advance()
    assert of(d, h.EventReceived) == [h.EventReceived("second", "go", seq)]
    assert d.kinds[-1] == "run_completed"


async def test_duplicate_deliveries_of_the_same_message_change_nothing() -> None:
    d = Driver(job_of(waiter))
    await d.advance()
    seq = d.event("approve", "once")
    for msg in d.log:  # every message read twice, as a redelivery would
        d.replay.ingest(msg)
    d.replay.ingest(d.log[seq - 1])
    await d.advance()
    assert len(of(d, h.EventReceived)) == 1
    fresh = Driver(job_of(waiter))
    fresh.log = [m for m in d.log for _ in (0, 1)]
    decision, appends = await replay_fresh(fresh)
    assert isinstance(decision, Finished) and appends == []


# -- cancel -----------------------------------------------------------------------------


async def test_cancel_while_parked_ends_the_run_and_purges_every_timer() -> None:
    d = Driver(job_of(waiter))
    await d.advance()
    seq = d.cancel("changed my mind")
    done = await d.advance()
    assert isinstance(done, Finished)
    assert done.entry == h.RunCancelled("changed my mind", seq)
    assert d.kinds == ["wait_started", "timer_set", "run_cancelled"]
    assert d.unscheduled == ["*"] and d.schedules == {}
    # an event or a second cancel after the end changes nothing
    d.event("approve")
    d.cancel()
    assert await d.advance() == done
    assert len(of(d, h.RunCancelled)) == 1


async def test_cancel_before_the_first_advance_runs_no_code() -> None:
    calls: list[str] = []

    async def handler(ctx: Context) -> None:
        calls.append("ran")

    d = Driver(job_of(handler))
    d.cancel()
    done = await d.advance()
    assert isinstance(done, Finished) and done.entry == h.RunCancelled(None, 2)
    assert calls == []


async def test_a_cancel_read_during_a_step_stops_the_run_before_the_next() -> None:
    async def handler(ctx: Context) -> None:
        await step.do("a", lambda: 1)
        await step.do("b", lambda: 2)

    d = Driver(job_of(handler))
    d.feed()
    first = await d.replay.next(None)
    assert isinstance(first, Execute) and first.step == "a"
    seq = d.cancel("mid-step")
    d.feed()
    assert d.replay.cancel_pending
    done = await d.replay.next(await d.execute(first))
    d.flush()
    assert isinstance(done, Finished) and done.entry == h.RunCancelled("mid-step", seq)
    assert d.executed == [("a", 1)]
    assert d.kinds[-1] == "run_cancelled" and not d.replay.cancel_pending


# -- pause and resume -----------------------------------------------------------------


async def test_pause_holds_the_next_step_and_resume_runs_it() -> None:
    ran: list[str] = []

    async def handler(ctx: Context) -> str:
        await step.do("a", lambda: ran.append("a"))
        await step.do("b", lambda: ran.append("b"))
        return "done"

    d = Driver(job_of(handler))
    d.publish(h.Pause(reason="freeze"))
    parked = await d.advance()
    assert isinstance(parked, Park) and ran == [] and d.kinds == []
    d.publish(h.Resume())
    done = await d.run()
    assert isinstance(done, Finished) and ran == ["a", "b"]


async def test_a_pause_mid_run_holds_the_step_after_the_one_in_flight() -> None:
    ran: list[str] = []

    async def handler(ctx: Context) -> str:
        await step.do("a", lambda: ran.append("a"))
        await step.wait_for_event("go", type="go", timeout=60)
        await step.do("b", lambda: ran.append("b"))
        return "done"

    d = Driver(job_of(handler))
    assert isinstance(await d.advance(), Park)  # waiting for "go"
    d.publish(h.Pause())
    d.event("go")
    parked = await d.advance()
    assert isinstance(parked, Park) and ran == ["a"]
    assert "step_completed" in d.kinds and d.kinds.count("step_completed") == 1
    # replay from scratch while paused agrees, then resume finishes the run
    await d.crash()
    assert isinstance(await d.advance(), Park) and ran == ["a"]
    d.publish(h.Resume())
    assert isinstance(await d.run(), Finished) and ran == ["a", "b"]


async def test_cancel_wins_over_pause() -> None:
    async def handler(ctx: Context) -> None:
        await step.do("a", lambda: 1)

    d = Driver(job_of(handler))
    d.publish(h.Pause())
    assert isinstance(await d.advance(), Park)
    d.cancel("stop")
    done = await d.advance()
    assert isinstance(done, Finished) and d.kinds[-1] == "run_cancelled"
