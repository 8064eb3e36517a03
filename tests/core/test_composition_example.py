"""The composition example of the README (parallel steps, a TaskGroup with a sleep and a
wait, a child run awaited and one started, wait-for-any), run as written with the test
kit: virtual clock, the real drive loop."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from jetlane import ChildFailed, Context, RunFailedError, define_job, step
from jetlane.testing import Environment


class Batch(msgspec.Struct):
    urls: list[str]


def fetch(url: str) -> int:
    return len(url)


async def fan_out(ctx: Context, input: Batch) -> list[int]:
    # parallel steps: plain asyncio works; each branch is checkpointed on its own
    sizes = await asyncio.gather(  # type: ignore[var-annotated]
        *(step.do(f"fetch:{u}", lambda u=u: fetch(u)) for u in input.urls)  # type: ignore[arg-type,misc]
    )
    async with asyncio.TaskGroup() as tg:  # TaskGroup too, with sleeps and waits inside
        tg.create_task(step.sleep("cool-down", "10m"))
        tg.create_task(step.wait_for_event("ack", type="ack", timeout="1h"))
    report = await step.invoke("report", job="build-report", input={"sizes": sizes})
    notify_id = await step.start_run("notify", job="notify", input={"to": "ops"})
    decision = await step.wait_for_any("decision", types=["approved", "rejected"], timeout="24h")
    if decision.type == "rejected":  # decision.payload holds the event's payload
        raise ChildFailed("decision", notify_id, "rejected", "Rejected", str(decision.payload))
    assert report == {"total": sum(sizes)}
    return list(sizes)


async def build_report(ctx: Context, input: dict[str, list[int]]) -> dict[str, int]:
    return {"total": await step.do("sum", lambda: sum(input["sizes"]))}


async def notify(ctx: Context, input: dict[str, str]) -> str:
    return await step.do("send", lambda: f"told {input['to']}")


JOBS = [
    define_job(name="fan-out", handler=fan_out, register=False),
    define_job(name="build-report", handler=build_report, register=False),
    define_job(name="notify", handler=notify, register=False),
]


async def test_the_composition_example_runs_as_written() -> None:
    urls = ["https://a.example", "https://bb.example", "https://ccc.example"]
    async with Environment(JOBS) as env:
        run = await env.start("fan-out", {"urls": urls}, run_id="fan-1")
        status = await env.status("fan-1")
        assert status.status in {"sleeping", "waiting"}
        await env.send_event("fan-1", "ack", None)
        await env.advance("10m")  # the cool-down ends; the child report runs
        await env.send_event("fan-1", "approved", {"by": "ada"})
        assert await run.result() == [len(u) for u in urls]
        history = await env.history("fan-1")
        kinds = [m.kind for m in history]
        assert kinds.count("step_completed") == 3 and "child_result" in kinds
        children = (await env.status("fan-1")).children
        assert {c.job for c in children} == {"build-report", "notify"}


async def test_the_example_fails_when_its_ack_never_comes() -> None:
    async with Environment(JOBS) as env:
        run = await env.start("fan-out", {"urls": ["u"]}, run_id="fan-2")
        with pytest.raises(RunFailedError) as failed:
            await run.result()  # the clock passes the cool-down and the ack's timeout
        # The TaskGroup wraps the wait's EventTimeout: a deliberate failure, so it fails.
        assert failed.value.status == "failed" and failed.value.type == "ExceptionGroup"
        status = await env.status("fan-2")
        assert [c.job for c in status.children] == []  # it never got to the child runs
        kinds = [m.kind for m in await env.history("fan-2")]
        assert "sleep_completed" in kinds and "wait_timed_out" in kinds
