"""Checked-in histories must keep decoding and replaying: old runs stay readable.

``golden/rolling_deploy.json`` was written by this module's handler through the
in-memory driver (deploy steps with a retry, a cool-down sleep per environment,
an approval wait answered by an event, completion). Change the handler's steps
and this test fails, as a deploy would block those runs.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import msgspec

from jetlane import ChildFailed, ChildTimeout, Context, RetryPolicy, step
from jetlane import wire as h
from jetlane._core.replay import Append, Finished, Park, Replay
from jetlane._core.status import summarize

from .replay_driver import FakeClock, entropy, job_of, plain

GOLDEN = Path(__file__).parent / "golden"


class DeployInput(msgspec.Struct):
    environments: list[str]


class EnvResult(msgspec.Struct):
    env: str
    ok: bool


def deploy(env: str) -> dict[str, str]:
    return {"env": env, "version": "1.2.3"}


def health(env: str) -> dict[str, str]:
    return {"status": "ok"}


async def rolling_deploy(ctx: Context, input: DeployInput) -> dict[str, Any]:
    results = []
    deploy_id = str(ctx.uuid())
    for env in input.environments:
        await step.do(
            f"deploy:{env}",
            partial(deploy, env),
            retries=RetryPolicy(limit=5, delay="10s", backoff="exponential"),
        )
        await step.sleep("cool-down", "10m")
        checked = await step.do(f"health:{env}", partial(health, env))
        results.append(EnvResult(env=env, ok=checked["status"] == "ok"))
    approval = await step.wait_for_event("approval", type="approve", timeout="24h")
    return {"id": deploy_id, "results": results, "approved_by": approval["by"]}


JOB = job_of(rolling_deploy, name="rolling-deploy")


def load(name: str) -> list[h.Message]:
    """A golden file, decoded by the same path the log reader takes (JSON body + kind)."""
    raw = json.loads((GOLDEN / name).read_text())
    return [
        h.Message(
            m["seq"],
            m["run_id"],
            m["direction"],
            m["kind"],
            h.decode(m["kind"], json.dumps(m["body"]).encode(), direction=m["direction"]),
            m["time"],
        )
        for m in raw
    ]


async def replay(messages: list[h.Message]) -> tuple[Any, list[Any]]:
    core = Replay(JOB, messages[0].run_id, clock=FakeClock(), entropy=entropy)
    for msg in messages:
        core.ingest(msg)
    decision = await core.next(None)
    core.close()
    return decision, core.outbox


def test_golden_history_decodes_and_summarizes() -> None:
    messages = load("rolling_deploy.json")
    kinds = [m.kind for m in messages]
    assert "invalid" not in kinds
    for kind in ("step_failed", "timer_set", "sleep_completed", "event_received", "run_completed"):
        assert kind in kinds
    status = summarize("deploy-42", messages)
    assert status is not None and status.status == "completed"
    assert status.output["approved_by"] == "ada"
    assert status.history_length == len(messages)


async def test_golden_history_replays_to_its_end_without_new_entries() -> None:
    messages = load("rolling_deploy.json")
    core = Replay(JOB, "deploy-42", clock=FakeClock(), entropy=entropy)
    for msg in messages[:-1]:  # everything but run_completed: the handler runs to the end
        core.ingest(msg)
    decision = await core.next(None)
    assert isinstance(decision, Finished) and isinstance(decision.entry, h.RunCompleted)
    appended = [e.body for e in core.outbox if isinstance(e, Append)]
    (entry,) = appended
    assert isinstance(entry, h.RunCompleted)
    assert plain(entry.output) == messages[-1].body.output


async def test_every_parked_prefix_of_the_golden_history_replays_to_a_park() -> None:
    messages = load("rolling_deploy.json")
    parks = 0
    for cut, msg in enumerate(messages):
        if msg.direction == "in" and msg.kind in ("timer", "event"):
            decision, outbox = await replay(messages[:cut])
            assert isinstance(decision, Park), (cut, decision)
            assert outbox == []
            parks += 1
    assert parks >= 4


def test_hand_written_v1_entries_with_defaults_omitted_still_decode() -> None:
    messages = load("minimal_v1.json")
    assert [type(m.body).__name__ for m in messages] == [
        "Start",
        "StepFailed",
        "Cancel",
        "RunCancelled",
    ]
    status = summarize("old-1", messages)
    assert status is not None and status.status == "cancelled"


# -- child runs (jetlane 0.3): a parent's history and a child's ---------------------
#
# ``golden/invoke_parent.json`` was written by ``orchestrate`` through the in-memory
# driver: an invoke answered by its child's end, one that timed out (its child
# cancelled), one whose child failed, a detached start_run, completion.
# ``golden/invoke_child.json`` is the history of the child that answered the first.


async def orchestrate(ctx: Context, input: dict[str, Any]) -> dict[str, Any]:
    charged = await step.invoke("charge", job="charge", input={"cents": input["cents"]})
    try:
        await step.invoke("ship", job="ship", input={"to": "ada"}, timeout="10m")
        shipped = True
    except ChildTimeout:
        shipped = False
    try:
        await step.invoke("notify", job="notify")
        noted = "sent"
    except ChildFailed as exc:
        noted = f"{exc.status}:{exc.type}"
    audit = await step.start_run("audit", job="audit", input={"order": input["order"]})
    return {"charged": charged, "shipped": shipped, "noted": noted, "audit": audit}


async def charge(ctx: Context, input: dict[str, int]) -> dict[str, Any]:
    receipt = await step.do("charge-card", lambda: {"receipt": "r-1"})
    return {"cents": input["cents"], **receipt}


ORCHESTRATE = job_of(orchestrate, name="orchestrate")
CHARGE = job_of(charge, name="charge")


def test_golden_child_histories_decode_and_summarize() -> None:
    parent = load("invoke_parent.json")
    kinds = [m.kind for m in parent]
    assert "invalid" not in kinds
    for kind in ("child_started", "child_ended", "child_result", "child_timed_out"):
        assert kind in kinds
    status = summarize("order-7", parent)
    assert status is not None and status.status == "completed"
    assert [(c.step, c.status) for c in status.children] == [
        ("charge", "completed"),
        ("ship", "timed_out"),
        ("notify", "failed"),
        ("audit", "detached"),
    ]
    child = summarize("order-7-4f117578c64ffd26", load("invoke_child.json"))
    assert child is not None and child.status == "completed"
    assert child.parent == h.Parent(run_id="order-7", step="charge")


async def test_golden_child_histories_replay_to_their_end_without_new_entries() -> None:
    for job, name in ((ORCHESTRATE, "invoke_parent.json"), (CHARGE, "invoke_child.json")):
        messages = load(name)
        last = max(i for i, m in enumerate(messages) if m.direction == "out")
        core = Replay(job, messages[0].run_id, clock=FakeClock(), entropy=entropy)
        for msg in messages[:last]:  # all but the terminal entry: the handler runs to the end
            core.ingest(msg)
        decision = await core.next(None)
        assert isinstance(decision, Finished) and isinstance(decision.entry, h.RunCompleted)
        (entry,) = [e.body for e in core.outbox if isinstance(e, Append)]
        assert isinstance(entry, h.RunCompleted)
        assert plain(entry.output) == messages[last].body.output
        core.close()


async def test_every_parked_prefix_of_the_golden_parent_replays_to_a_park() -> None:
    messages = load("invoke_parent.json")
    parks = 0
    for cut, msg in enumerate(messages):
        if msg.direction == "in" and msg.kind in ("timer", "child_ended"):
            core = Replay(ORCHESTRATE, "order-7", clock=FakeClock(), entropy=entropy)
            for m in messages[:cut]:
                core.ingest(m)
            decision = await core.next(None)
            assert isinstance(decision, Park), (cut, decision)
            assert [e for e in core.outbox if isinstance(e, Append)] == []
            core.close()
            parks += 1
    assert parks >= 3


# -- parallel branches (jetlane 0.3) ------------------------------------------------
#
# ``golden/parallel_v1.json`` was written by ``fan_out`` through the in-memory driver:
# three parallel steps that finished in another order than they started (the journal
# holds them as they finished), a TaskGroup with a sleep and a wait_for_any answered by
# an event, completion. No new kinds: parallel branches are ordinary entries.


async def fan_out(ctx: Context, input: dict[str, Any]) -> dict[str, Any]:
    import asyncio

    async def fetch(url: str) -> int:
        await asyncio.sleep({"a": 0.03, "b": 0.0, "c": 0.015}[url])
        return len(url) * 10

    sizes = await asyncio.gather(*(step.do(f"fetch:{u}", partial(fetch, u)) for u in "abc"))
    async with asyncio.TaskGroup() as tg:
        tg.create_task(step.sleep("cool-down", "10m"))
        decided = tg.create_task(
            step.wait_for_any("decision", types=["approved", "rejected"], timeout="1h")
        )
    decision = decided.result()
    return {"sizes": list(sizes), "decision": decision.type, "by": decision.payload}


FAN_OUT = job_of(fan_out, name="fan-out")


def test_golden_parallel_history_holds_outcomes_in_the_order_they_finished() -> None:
    messages = load("parallel_v1.json")
    assert "invalid" not in [m.kind for m in messages]
    done = [m.body.step for m in messages if isinstance(m.body, h.StepCompleted)]
    assert done == ["fetch:b", "fetch:c", "fetch:a"]
    (took,) = [m.body for m in messages if isinstance(m.body, h.EventReceived)]
    assert took.types == ["approved", "rejected"] and took.type == "approved"
    status = summarize("fan-1", messages)
    assert status is not None and status.status == "completed"


async def test_golden_parallel_history_replays_to_its_end_and_parks_at_each_input() -> None:
    messages = load("parallel_v1.json")
    last = max(i for i, m in enumerate(messages) if m.direction == "out")
    core = Replay(FAN_OUT, "fan-1", clock=FakeClock(), entropy=entropy)
    for msg in messages[:last]:
        core.ingest(msg)
    decision = await core.next(None)
    assert isinstance(decision, Finished) and isinstance(decision.entry, h.RunCompleted)
    (entry,) = [e.body for e in core.outbox if isinstance(e, Append)]
    assert isinstance(entry, h.RunCompleted)
    assert plain(entry.output) == {"sizes": [10, 10, 10], "decision": "approved", "by": "ada"}
    await core.aclose()
    parks = 0
    for cut, msg in enumerate(messages):
        if msg.direction == "in" and msg.kind in ("timer", "event"):
            core = Replay(FAN_OUT, "fan-1", clock=FakeClock(), entropy=entropy)
            for m in messages[:cut]:
                core.ingest(m)
            decision = await core.next(None)
            assert isinstance(decision, Park) and core.outbox == [], (cut, decision)
            await core.aclose()
            parks += 1
    assert parks >= 2
