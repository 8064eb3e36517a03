"""Parallel branches with real runner processes: a runner SIGKILLed in the middle of a
20-way fan-out; a new runner finishes it, and no branch whose outcome was recorded runs
again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from jetlane import Client, Context, Names, RunFailedError, define_job, step
from jetlane.embedded import EmbeddedNats

from .helpers import StartRunner, eventually
from .processes import RunnerProcess, executions


async def test_sigkill_mid_fan_out_reruns_no_recorded_branch(
    nats_server: EmbeddedNats, client: Client, names: Names, tmp_path: Path
) -> None:
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    runner = RunnerProcess(nats_server.url, names, log_a, tag="a")
    parts = {f"part:{i}" for i in range(20)}
    try:
        await client.start("fan-out", {"n": 20, "delay": 0.3}, run_id="fan-1")

        async def some_done() -> bool:
            done = [m async for m in client.history("fan-1") if m.kind == "step_completed"]
            return 5 <= len(done) < 15

        await eventually(some_done, timeout=30, what="a few branches to complete")
        runner.kill()
        assert {key.split("/", 1)[1] for key in executions(log_a)} == parts  # all at once
        runner = RunnerProcess(nats_server.url, names, log_b, tag="b")
        assert await client.result("fan-1", timeout=60) == list(range(20))
    finally:
        runner.kill()
    completed = [m.body.step async for m in client.history("fan-1") if m.kind == "step_completed"]
    # One outcome per branch: a branch the killed runner had recorded was not run again
    # (it would have a second step_completed), and the new runner finished the others.
    assert sorted(completed) == sorted(parts)
    rerun = [key.split("/", 1)[1] for key in executions(log_b)]
    assert rerun and len(rerun) == len(set(rerun)) and len(rerun) <= 15


async def test_parallel_branches_with_timers_and_children_on_a_real_runner(
    client: Client, start_runner: StartRunner
) -> None:
    async def fetch(u: str) -> int:
        await asyncio.sleep(0.05)
        return len(u)

    async def fan_out(ctx: Context, urls: list[str]) -> dict[str, Any]:
        sizes = await asyncio.gather(
            *(step.do(f"fetch:{u}", lambda u=u: fetch(u)) for u in urls)  # type: ignore[misc]
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(step.sleep("cool-down", 0.3))
            ack = tg.create_task(step.wait_for_event("ack", type="ack", timeout="1m"))
        total = await step.invoke("report", job="par-report", input=list(sizes))
        decision = await step.wait_for_any("decision", types=["approved", "rejected"])
        return {"sizes": list(sizes), "ack": ack.result(), "total": total, "by": decision.type}

    async def report(ctx: Context, sizes: list[int]) -> int:
        return await step.do("sum", lambda: sum(sizes))

    await start_runner(
        [
            define_job(name="par-fan-out", handler=fan_out, register=False),
            define_job(name="par-report", handler=report, register=False),
        ]
    )
    await client.start("par-fan-out", ["a", "bb", "ccc"], run_id="par-1")
    await client.send_event("par-1", "ack", "ok")
    await client.send_event("par-1", "rejected", None)
    result = await client.result("par-1", timeout=30)
    assert result == {"sizes": [1, 2, 3], "ack": "ok", "total": 6, "by": "rejected"}
    kinds = [m.kind async for m in client.history("par-1")]
    assert kinds.count("step_completed") == 3 and kinds.count("sleep_completed") == 1


async def test_a_cancel_during_a_fan_out_stops_it_with_only_the_steps_in_flight_finishing(
    nats_server: EmbeddedNats, client: Client, names: Names, tmp_path: Path
) -> None:
    exec_log = tmp_path / "exec.log"
    runner = RunnerProcess(nats_server.url, names, exec_log, tag="c")
    try:
        await client.start("fan-out-capped", {"n": 40, "delay": 0.2}, run_id="fan-c")

        async def some_done() -> bool:
            done = [m async for m in client.history("fan-c") if m.kind == "step_completed"]
            return len(done) >= 4

        await eventually(some_done, timeout=30, what="a few branches to complete")
        assert await client.cancel("fan-c", "enough")
        with pytest.raises(RunFailedError) as ended:
            await client.result("fan-c", timeout=30)
        assert ended.value.status == "cancelled"
    finally:
        runner.kill()
    history = [m async for m in client.history("fan-c")]
    cancel_at = next(m.seq for m in history if m.kind == "cancel")
    outcomes = [m for m in history if m.kind == "step_completed"]
    # Steps started before the cancel was taken in (at most 4 at a time) may finish;
    # none starts after it: every execution is one the journal shows or one in flight.
    ran = executions(exec_log)
    assert len(ran) <= len(outcomes) + 4 and len(ran) < 40
    assert history[-1].kind == "run_cancelled" and history[-1].seq > cancel_at
