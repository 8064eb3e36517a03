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

from jetlane import Context, RetryPolicy, step
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
