"""A bug in handler code blocks the run until fixed code replays it; a deliberate
failure fails it. And a step result that cannot be recorded holds the run at that
step (its effect happened) until an operator resumes it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from jetlane import (
    ConfigError,
    Context,
    Failure,
    NonDeterminismError,
    NonRetryableError,
    RetryPolicy,
    StepFailed,
    step,
)
from jetlane import wire as h
from jetlane._core.definition import define_job, describe_job
from jetlane._core.replay import Blocked, Finished, Park
from jetlane.testing import replay_async

from .replay_driver import Driver, job_of, of, plain


async def fix(d: Driver, handler: Any) -> None:
    """Deploy other code: a fresh core with ``handler`` replays the log."""
    d.job = job_of(handler)
    await d.crash()


# -- handler code that raises ---------------------------------------------------------


async def test_a_bug_before_any_step_blocks_and_fixed_code_finishes_the_run() -> None:
    async def buggy(ctx: Context, input: dict[str, str]) -> str:
        return input["carrier"]

    d = Driver(job_of(buggy), {"carrier_name": "ups"})
    blocked = await d.advance()
    assert isinstance(blocked, Blocked) and blocked.step == "(start)"
    assert blocked.error.type == "KeyError"
    assert "before its first step" in blocked.error.message
    assert "jetlane.Failure" in blocked.error.message
    assert any(f.function == "buggy" for f in blocked.error.traceback or [])
    assert not of(d, h.RunFailed)

    await d.crash()  # the same code again (a runner restart): the same block, no new entry
    assert isinstance(await d.advance(), Blocked)
    assert len(of(d, h.RunBlocked)) == 1

    async def fixed(ctx: Context, input: dict[str, str]) -> str:
        return input.get("carrier", input.get("carrier_name", "?"))

    await fix(d, fixed)
    done = await d.advance()
    assert isinstance(done, Finished) and plain(of(d, h.RunCompleted)[0].output) == "ups"


async def test_a_bug_after_a_step_blocks_there_and_the_step_is_not_run_again() -> None:
    async def buggy(ctx: Context) -> int:
        rate = await step.do("rate", lambda: {"eur": 2})
        return int(rate["usd"])

    d = Driver(job_of(buggy))
    blocked = await d.advance()
    assert isinstance(blocked, Blocked) and blocked.step == "rate"
    assert "after step 'rate'" in blocked.error.message

    async def fixed(ctx: Context) -> int:
        rate = await step.do("rate", lambda: {"eur": 2})
        return int(rate.get("usd", rate["eur"]))

    await fix(d, fixed)
    assert isinstance(await d.advance(), Finished)
    assert d.executed == [("rate", 1)]
    assert plain(of(d, h.RunCompleted)[0].output) == 2


async def test_atom_misuse_is_a_bug_and_blocks() -> None:
    async def gathered(ctx: Context) -> None:
        await asyncio.gather(step.do("a", lambda: 1), step.do("a", lambda: 2))

    async def bad_name(ctx: Context) -> None:
        await step.do("a#1", lambda: 1)

    for handler, word in [(gathered, "two parallel branches"), (bad_name, "no '#'")]:
        d = Driver(job_of(handler))
        done = await d.advance()
        assert isinstance(done, Blocked) and done.error.type == "ConfigError"
        assert word in done.error.message
        await d.close()


class CarrierRefused(Failure):
    """A user's own failure type."""


@pytest.mark.parametrize(
    ("raised", "type_"),
    [
        (Failure("order is void"), "Failure"),
        (CarrierRefused("no carrier"), "CarrierRefused"),
        (NonRetryableError("gave up"), "NonRetryableError"),
        (SystemExit(3), "SystemExit"),
    ],
)
async def test_deliberate_failures_fail_the_run(raised: BaseException, type_: str) -> None:
    async def handler(ctx: Context) -> None:
        await step.do("a", lambda: 1)
        raise raised

    d = Driver(job_of(handler))
    done = await d.advance()
    assert isinstance(done, Finished) and isinstance(done.entry, h.RunFailed)
    assert done.entry.error.type == type_
    assert not of(d, h.RunBlocked)


async def test_step_failed_and_event_timeout_let_through_fail_the_run() -> None:
    def refuse() -> None:
        raise Failure("card declined")  # inside a step: fails the step at once

    async def charges(ctx: Context) -> None:
        await step.do("charge", refuse, retries=RetryPolicy(limit=5))

    d = Driver(job_of(charges))
    done = await d.run()
    assert isinstance(done, Finished) and isinstance(done.entry, h.RunFailed)
    assert done.entry.error.type == "StepFailed" and "card declined" in done.entry.error.message
    assert d.executed == [("charge", 1)]  # no retries

    async def waits(ctx: Context) -> None:
        await step.wait_for_event("ok", type="ok", timeout="1m")

    d = Driver(job_of(waits))
    done = await d.run()
    assert isinstance(done, Finished) and isinstance(done.entry, h.RunFailed)
    assert done.entry.error.type == "EventTimeout"


async def test_caught_step_failed_is_the_handlers_business() -> None:
    async def handler(ctx: Context) -> str:
        try:
            await step.do("a", lambda: 1 / 0, retries=RetryPolicy(limit=0))
        except StepFailed:
            return "compensated"
        return "no"

    d = Driver(job_of(handler))
    assert isinstance(await d.run(), Finished)
    assert plain(of(d, h.RunCompleted)[0].output) == "compensated"


async def test_fail_on_makes_listed_types_fail_the_run() -> None:
    async def handler(ctx: Context) -> None:
        raise LookupError("no such tenant")

    job = define_job(name="t", handler=handler, fail_on=(LookupError,), register=False)
    d = Driver(job)
    done = await d.advance()
    assert isinstance(done, Finished) and isinstance(done.entry, h.RunFailed)
    assert done.entry.error.type == "LookupError"
    assert describe_job(job)["fail_on"] == ["LookupError"]

    async def other(ctx: Context) -> None:
        raise KeyError("k")  # a subclass of LookupError: fails too

    d = Driver(define_job(name="t", handler=other, fail_on=LookupError, register=False))
    done = await d.advance()
    assert isinstance(done, Finished) and isinstance(done.entry, h.RunFailed)

    with pytest.raises(ConfigError, match="fail_on takes exception classes"):
        define_job(name="t", handler=handler, fail_on=("LookupError",), register=False)  # type: ignore[arg-type]


# -- results that cannot be recorded --------------------------------------------------


class Response:
    """Like requests.Response: what a step should not return."""

    def __init__(self, body: dict[str, int]) -> None:
        self.body = body

    def json(self) -> dict[str, int]:
        return self.body


async def test_an_unrecordable_step_result_holds_the_run_until_fixed_and_resumed() -> None:
    effects: list[str] = []

    def post() -> Response:
        effects.append("posted")
        return Response({"id": 7})

    async def buggy(ctx: Context) -> int:
        response = await step.do("post", post)
        return int(response["id"])  # type: ignore[index]

    d = Driver(job_of(buggy))
    held = await d.advance()
    assert isinstance(held, Blocked) and held.step == "post"
    assert held.error.type == "UnrecordableResult"
    assert "Response" in held.error.message and "jetlane resume" in held.error.message
    assert effects == ["posted"]
    assert not of(d, h.StepFailed) and not of(d, h.StepCompleted)

    # Replays (a restart, the periodic scan, even fixed code) never repeat the effect.
    async def fixed(ctx: Context) -> int:
        body = await step.do("post", lambda: post().json())
        return int(body["id"])

    for handler in (buggy, fixed):
        await fix(d, handler)
        again = await d.advance()
        assert isinstance(again, Blocked) and again.error.type == "UnrecordableResult"
        assert effects == ["posted"]
    assert len(of(d, h.RunBlocked)) == 1

    # A resume is the operator's word that the step may run again: with the fix, it ends.
    d.publish(h.Resume())
    await d.crash()  # a blocked run is not cached: the resume's delivery replays it
    done = await d.advance()
    assert isinstance(done, Finished) and plain(of(d, h.RunCompleted)[0].output) == 7
    assert effects == ["posted", "posted"]


async def test_a_resume_with_unfixed_code_holds_the_run_again() -> None:
    calls = 0

    def post() -> object:
        nonlocal calls
        calls += 1
        return object()

    async def buggy(ctx: Context) -> object:
        return await step.do("post", post)

    d = Driver(job_of(buggy))
    assert isinstance(await d.advance(), Blocked)
    d.publish(h.Resume())
    await d.crash()
    assert isinstance(await d.advance(), Blocked)
    assert calls == 2 and len(of(d, h.RunBlocked)) == 2
    await d.crash()
    assert isinstance(await d.advance(), Blocked)
    assert calls == 2  # the second hold holds too: the first resume was used up


async def test_an_unrecordable_output_blocks_and_a_fix_finishes_the_run() -> None:
    async def buggy(ctx: Context) -> object:
        await step.do("a", lambda: 1)
        return Response({"id": 1})

    d = Driver(job_of(buggy))
    blocked = await d.advance()
    assert isinstance(blocked, Blocked) and blocked.error.type == "OutputError"
    assert "Response" in blocked.error.message

    async def fixed(ctx: Context) -> object:
        await step.do("a", lambda: 1)
        return Response({"id": 1}).json()

    await fix(d, fixed)
    assert isinstance(await d.advance(), Finished)
    assert d.executed == [("a", 1)]


# -- checking code against recorded histories (jetlane.testing.replay) -----------------


async def test_replay_passes_fixed_code_over_the_history_of_a_held_run() -> None:
    async def buggy(ctx: Context) -> int:
        await step.do("quote", lambda: 1)
        response = await step.do("post", lambda: Response({"id": 7}))
        return int(response["id"])  # type: ignore[index]

    d = Driver(job_of(buggy))
    assert isinstance(await d.advance(), Blocked)

    async def fixed(ctx: Context) -> int:
        await step.do("quote", lambda: 1)
        body = await step.do("post", lambda: Response({"id": 7}).json())
        return int(body["id"])

    # What a team runs before deploying the fix: the held run is no mismatch.
    await replay_async(job_of(fixed), d.log)

    async def renamed(ctx: Context) -> int:
        await step.do("price", lambda: 1)
        body = await step.do("post", lambda: Response({"id": 7}).json())
        return int(body["id"])

    with pytest.raises(NonDeterminismError, match="'price'"):
        await replay_async(job_of(renamed), d.log)


async def test_replay_passes_a_history_that_failed_on_a_bug_before_bugs_blocked() -> None:
    async def buggy(ctx: Context, input: dict[str, str]) -> str:
        return input["carrier"]

    def message(seq: int, direction: str, body: Any) -> h.Message:
        return h.Message(seq, "r1", direction, h.kind_of(body), body, "2025-01-01T00:00:00Z")

    failed = h.RunFailed(error=h.ErrorInfo(type="KeyError", message="'carrier'"))
    old = [message(1, "in", h.Start(job="t", input={})), message(2, "out", failed)]
    await replay_async(job_of(buggy), old)  # it ended there; this code stops there too

    async def other_bug(ctx: Context, input: dict[str, str]) -> str:
        return str(int(input.get("carrier", "x")))

    with pytest.raises(NonDeterminismError, match="ValueError"):
        await replay_async(job_of(other_bug), old)


# -- handler code that catches the engine's unwinding ----------------------------------


async def test_a_handler_that_catches_base_exception_cannot_run_past_a_held_step() -> None:
    effects: list[str] = []

    def post() -> Response:
        effects.append("posted")
        return Response({"id": 7})

    async def swallows(ctx: Context) -> str:
        with contextlib.suppress(BaseException):  # swallows the engine's unwinding too
            await step.do("post", post)
        await step.do("after", lambda: 1)
        return "went on"

    d = Driver(job_of(swallows))
    for _ in range(2):  # live, then a replay of the log
        held = await d.advance()
        assert isinstance(held, Blocked) and held.error.type == "UnrecordableResult"
        await d.crash()
    assert effects == ["posted"] and d.executed == [("post", 1)]
    assert not of(d, h.RunCompleted) and len(of(d, h.RunBlocked)) == 1


async def test_a_handler_that_catches_base_exception_cannot_run_past_a_divergence() -> None:
    async def old(ctx: Context) -> str:
        await step.do("a", lambda: 1)
        await step.sleep("nap", "1h")
        return "old"

    d = Driver(job_of(old))
    assert isinstance(await d.advance(), Park)

    async def swallows(ctx: Context) -> str:
        try:
            await step.do("b", lambda: 2)  # the history records 'a' here
        except BaseException:
            return "swallowed"
        return "new"

    await fix(d, swallows)
    blocked = await d.advance()
    assert isinstance(blocked, Blocked) and blocked.error.type == "NonDeterminismError"
    assert "'b'" in blocked.error.message and not of(d, h.RunCompleted)


async def test_fixed_code_that_renames_a_held_step_does_not_run_it_without_a_resume() -> None:
    effects: list[str] = []

    def post() -> Response:
        effects.append("posted")
        return Response({"id": 7})

    async def buggy(ctx: Context) -> int:
        await step.do("quote", lambda: 1)
        response = await step.do("post", post)
        return int(response["id"])  # type: ignore[index]

    d = Driver(job_of(buggy))
    assert isinstance(await d.advance(), Blocked)

    async def renamed(ctx: Context) -> int:
        await step.do("quote", lambda: 1)
        body = await step.do("post-json", lambda: post().json())  # the fix renamed it
        return int(body["id"])

    await fix(d, renamed)
    blocked = await d.advance()
    assert isinstance(blocked, Blocked) and blocked.step == "post"
    assert blocked.error.type == "NonDeterminismError" and "'post-json'" in blocked.error.message
    assert effects == ["posted"]

    d.publish(h.Resume())  # the operator's word: the renamed step may run
    await d.crash()
    assert isinstance(await d.advance(), Finished)
    assert effects == ["posted", "posted"]


async def test_an_exception_group_fails_only_when_every_member_is_deliberate() -> None:
    async def failing(ctx: Context) -> None:
        await step.do("a", lambda: 1)
        raise ExceptionGroup("branches", [Failure("one"), NonRetryableError("two")])

    async def buggy(ctx: Context) -> None:
        await step.do("a", lambda: 1)
        raise ExceptionGroup("branches", [Failure("one"), KeyError("two")])

    d = Driver(job_of(failing))
    done = await d.advance()
    assert isinstance(done, Finished) and isinstance(done.entry, h.RunFailed)
    d = Driver(job_of(buggy))
    assert isinstance(await d.advance(), Blocked)


async def test_code_that_raises_where_the_history_goes_on_blocks_with_its_traceback() -> None:
    async def v1(ctx: Context) -> None:
        await step.do("a", lambda: 1)
        await step.do("b", lambda: 2)
        await step.wait_for_event("go", type="go")

    async def v2(ctx: Context) -> None:
        await step.do("a", lambda: 1)
        raise KeyError("b")

    d = Driver(job_of(v1))
    await d.advance()
    await fix(d, v2)
    blocked = await d.advance()
    assert isinstance(blocked, Blocked) and blocked.error.type == "NonDeterminismError"
    assert any(f.function == "v2" for f in blocked.error.traceback or [])
