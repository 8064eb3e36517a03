"""step.wait_for_any: the first event of any of several types, earliest first; the
others stay for later waits; a timeout raises EventTimeout; replays agree."""

from __future__ import annotations

from typing import Any

import pytest

from jetlane import ConfigError, Context, Event, EventTimeout, step
from jetlane import wire as h
from jetlane._core.replay import Blocked, Finished, Park
from jetlane._core.status import summarize

from .replay_driver import Driver, job_of, of, plain, replay_fresh


async def decide(ctx: Context) -> dict[str, Any]:
    decision = await step.wait_for_any("decision", types=["approved", "rejected"], timeout="1h")
    later = await step.wait_for_event("note", type="rejected", timeout="1h")
    return {"type": decision.type, "payload": decision.payload, "seq": decision.seq, "later": later}


async def test_returns_the_first_event_and_leaves_the_other_types() -> None:
    d = Driver(job_of(decide))
    parked = await d.advance()
    assert isinstance(parked, Park) and parked.step == "decision"
    (started,) = of(d, h.WaitStarted)
    assert started.types == ["approved", "rejected"]
    status = summarize(d.run_id, d.log)
    assert (
        status is not None
        and status.status == "waiting"
        and status.waiting_for == "approved|rejected"
    )
    seq = d.event("approved", {"by": "ops"})
    d.event("rejected", "too late")
    done = await d.advance()
    assert isinstance(done, Finished)
    output = plain(of(d, h.RunCompleted)[0].output)
    assert output == {"type": "approved", "payload": {"by": "ops"}, "seq": seq, "later": "too late"}
    (took, note) = of(d, h.EventReceived)
    assert took.types == ["approved", "rejected"] and took.type == "approved"
    assert note.types is None and note.type == "rejected"


async def test_events_sent_before_the_wait_count_earliest_first() -> None:
    d = Driver(job_of(decide))
    unrelated = d.event("other")
    first = d.event("rejected", "no")
    d.event("approved", "yes")
    d.event("rejected", "no again")
    done = await d.advance()
    assert isinstance(done, Finished)
    output = plain(of(d, h.RunCompleted)[0].output)
    assert output["type"] == "rejected" and output["seq"] == first and first > unrelated
    assert output["later"] == "no again"  # the first rejected was taken; the next one stays


async def test_timeout_raises_event_timeout_naming_every_type() -> None:
    seen: list[EventTimeout] = []

    async def handler(ctx: Context) -> str:
        try:
            await step.wait_for_any("decision", types=["approved", "rejected"], timeout="1m")
        except EventTimeout as exc:
            seen.append(exc)
            return "timed out"
        return "no"

    d = Driver(job_of(handler))
    assert isinstance(await d.run(), Finished)
    assert plain(of(d, h.RunCompleted)[0].output) == "timed out"
    (timed_out,) = of(d, h.WaitTimedOut)
    assert timed_out.types == ["approved", "rejected"]
    assert seen[0].types == ("approved", "rejected")
    assert "'approved' or 'rejected'" in str(seen[0])


async def test_every_prefix_replays_to_the_same_decision() -> None:
    d = Driver(job_of(decide))
    await d.advance()
    d.event("rejected", 1)
    d.event("rejected", 2)
    await d.advance()
    full = list(d.log)
    for cut in range(1, len(full) + 1):
        d.log = full[:cut]
        decision, appends = await replay_fresh(d)
        if any(m.direction == "out" for m in full[cut:]):
            continue  # mid-session cut: the fresh core would write what came next
        assert isinstance(decision, Park | Finished)
        if isinstance(decision, Finished) and cut == len(full):
            assert appends == []


async def test_switching_between_wait_and_wait_any_is_a_divergence() -> None:
    async def old(ctx: Context) -> Any:
        return await step.wait_for_event("decision", type="approved", timeout="1h")

    d = Driver(job_of(old))
    await d.advance()
    d.job = job_of(decide)
    await d.crash()
    blocked = await d.advance()
    assert isinstance(blocked, Blocked) and "step.wait_for_any" in blocked.error.message
    assert "step.wait_for_event" in blocked.error.message


@pytest.mark.parametrize("types", [[], "approved", ["a", "a"], ["a", ""]])
async def test_bad_types_are_a_config_error(types: Any) -> None:
    async def handler(ctx: Context) -> None:
        await step.wait_for_any("x", types=types)

    d = Driver(job_of(handler))
    blocked = await d.advance()
    assert isinstance(blocked, Blocked) and blocked.error.type == "ConfigError"
    assert "types" in blocked.error.message


def test_event_is_public_and_plain() -> None:
    event = Event(type="approved", payload={"a": 1}, seq=4)
    assert (event.type, event.payload, event.seq) == ("approved", {"a": 1}, 4)
    assert issubclass(EventTimeout, TimeoutError) and not issubclass(Event, ConfigError)
