"""The shared drive loop over the in-memory store: the races the fence settles."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import msgspec
import pytest

from jetlane import Context, EventTimeout, define_job, step
from jetlane import wire as h
from jetlane._core.errors import FenceLost
from jetlane._core.replay import Finished, Park, Replay
from jetlane._drive import Driver, Outdated
from jetlane.testing import MemoryStore, VirtualClock, run_step

from .replay_driver import Driver as LogDriver
from .replay_driver import job_of


async def waiter(ctx: Context) -> Any:
    try:
        return await step.wait_for_event("w", type="go", timeout="1h")
    except EventTimeout:
        return "timed out"


JOB = define_job(name="waiter", handler=waiter, register=False)


class RacingStore(MemoryStore):
    """An event lands just before the runner's next append (stored, then refused)."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.race: h.Input | None = None

    async def append(self, run_id: str, body: h.Journal, expected: int) -> int:
        if self.race is not None:
            event, self.race = self.race, None
            self.add(run_id, "in", event)
        return await super().append(run_id, body, expected)


async def session(store: MemoryStore, clock: VirtualClock, run_id: str) -> Any:
    replay = Replay(JOB, run_id, clock=clock)
    for message in await store.read(run_id):
        replay.ingest(message)
    driver = Driver(store, lambda r, ex: run_step(ex, clock()))
    try:
        return await driver.settle(replay)
    finally:
        replay.close()


async def test_an_event_stored_while_a_timeout_is_written_wins() -> None:
    clock = VirtualClock()
    store = RacingStore(clock)
    store.add("r", "in", h.Start(job="waiter"))
    assert isinstance(await session(store, clock, "r"), Park)
    clock.now += timedelta(hours=2)  # the deadline passed with no event in the log
    store.race = h.Event(type="go", payload="just in time")
    with pytest.raises(Outdated):
        await session(store, clock, "r")  # the refused append brought the event in
    decision = await session(store, clock, "r")  # a replay from the log
    assert isinstance(decision, Finished)
    kinds = [m.kind for m in await store.read("r") if m.direction == "out"]
    assert kinds == ["wait_started", "timer_set", "event_received", "run_completed"]


async def test_a_cancel_stored_while_a_step_outcome_is_written_ends_the_run() -> None:
    ran: list[str] = []

    async def two(ctx: Context) -> str:
        await step.do("a", lambda: ran.append("a"))
        await step.do("b", lambda: ran.append("b"))
        return "done"

    job = define_job(name="two", handler=two, register=False)
    clock = VirtualClock()
    store = RacingStore(clock)
    store.add("c", "in", h.Start(job="two"))
    store.race = h.Cancel(reason="stop")  # lands during the append of a's outcome
    replay = Replay(job, "c", clock=clock)
    for message in await store.read("c"):
        replay.ingest(message)
    decision = await Driver(store, lambda r, ex: run_step(ex, clock())).settle(replay)
    replay.close()
    assert isinstance(decision, Finished) and isinstance(decision.entry, h.RunCancelled)
    assert ran == ["a"]  # b never started


async def test_a_cancel_stored_while_the_handler_runs_between_steps_stops_the_next() -> None:
    """The handler's own code between two steps takes a while (here: it awaits); a cancel
    stored meanwhile is read before the next step starts (found by review: the fenced
    append of the first step's outcome had been taken as proof for too long)."""
    ran: list[str] = []
    between = asyncio.Event()
    proceed = asyncio.Event()

    async def slow_between(ctx: Context) -> str:
        await step.do("a", lambda: ran.append("a"))
        between.set()
        await proceed.wait()  # orchestrator code that takes time
        await step.do("b", lambda: ran.append("b"))
        return "done"

    job = define_job(name="between", handler=slow_between, register=False)
    clock = VirtualClock()
    store = MemoryStore(clock)
    store.add("x", "in", h.Start(job="between"))
    replay = Replay(job, "x", clock=clock)
    for message in await store.read("x"):
        replay.ingest(message)
    driving = asyncio.create_task(Driver(store, lambda r, ex: run_step(ex, clock())).settle(replay))
    await asyncio.wait_for(between.wait(), 5)
    store.add("x", "in", h.Cancel(reason="now"))
    await asyncio.sleep(0.01)  # longer than the window a fenced append vouches for
    proceed.set()
    decision = await asyncio.wait_for(driving, 5)
    await replay.aclose()
    assert isinstance(decision, Finished) and isinstance(decision.entry, h.RunCancelled)
    assert ran == ["a"]


async def test_a_journal_entry_written_by_a_stale_runner_ends_the_session_before_the_step() -> None:
    """Found by the chaos checker: runner A, stopped past its lease, resumes and records
    a step's outcome after runner B read the history but before B runs that step. B
    must see the entry (the read before a step covers the journal) and stop, not run
    the step again (its outcome would be refused by the fence, the effect not)."""

    class Racing(LogDriver):
        zombie: h.Journal | None = None

        async def read(self, run_id: str, after: int = 0) -> list[h.Message]:
            if self.zombie is not None:  # A's append lands just before B's read
                self._add("out", self.zombie)
                self.zombie = None
            return await super().read(run_id, after)

    async def handler(ctx: Context) -> None:
        await step.do("charge", lambda: "charged")

    d = Racing(job_of(handler))
    d.zombie = h.StepCompleted("charge", 1, msgspec.Raw(b'"charged"'), "2025-01-01T12:00:00Z", 1.0)
    with pytest.raises(FenceLost):
        await d.advance()
    assert d.executed == []  # B ran nothing; a replay with A's entry goes on from it
    await d.crash()
    done = await d.advance()
    assert isinstance(done, Finished) and d.executed == []
