"""Parallel branches with real runner processes: a runner SIGKILLed in the middle of a
20-way fan-out; a new runner finishes it, and no branch whose outcome was recorded runs
again."""

from __future__ import annotations

from pathlib import Path

from jetlane import Client, Names
from jetlane.embedded import EmbeddedNats

from .helpers import eventually
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
