"""Handler bugs with real runner processes: a bug blocks the run, a new runner with
fixed code finishes it without re-running recorded steps; a step whose result cannot be
recorded is held (its effect is never repeated by a restart) until fixed and resumed."""

from __future__ import annotations

from pathlib import Path

from jetlane import Client, Names
from jetlane._nats.log import Log
from jetlane.embedded import EmbeddedNats

from .helpers import eventually
from .processes import RunnerProcess, executions


async def _status_is(client: Client, run_id: str, status: str) -> None:
    async def reached() -> bool:
        return (await client.status(run_id)).status == status

    await eventually(reached, timeout=30, what=f"{run_id} {status}")


async def test_a_bug_blocks_and_a_runner_with_fixed_code_finishes_the_run(
    nats_server: EmbeddedNats, client: Client, names: Names, tmp_path: Path
) -> None:
    exec_log, fixed = tmp_path / "exec.log", tmp_path / "fixed"
    runner = RunnerProcess(nats_server.url, names, exec_log, tag="old")
    try:
        await client.start("buggy-carrier", {"fixed": str(fixed)}, run_id="bug-1")
        await _status_is(client, "bug-1", "blocked")
        status = await client.status("bug-1")
        assert status.error is not None and status.error.type == "KeyError"
        assert "after step 'quote'" in status.error.message
        frames = status.error.traceback or []
        assert frames and frames[-1].function == "buggy_carrier"  # where the bug is
        assert frames[0].function == "buggy_carrier"  # no engine frames before it

        async def logged() -> bool:
            out = runner.output()
            return "run blocked" in out and "error" in out and "jobs.py" in out

        await eventually(logged, timeout=10, what="the runner to log the bug with its frames")
        runner.kill()
        fixed.touch()  # the deploy of fixed code
        runner = RunnerProcess(nats_server.url, names, exec_log, tag="new")
        assert await client.result("bug-1", timeout=30) == "ups"
        assert executions(exec_log) == ["bug-1/quote"]  # the recorded step did not run again
    finally:
        runner.kill()


async def test_an_unrecordable_result_is_held_across_restarts_until_resumed(
    nats_server: EmbeddedNats, client: Client, log: Log, names: Names, tmp_path: Path
) -> None:
    exec_log, fixed = tmp_path / "exec.log", tmp_path / "fixed"
    runner = RunnerProcess(nats_server.url, names, exec_log, tag="a")
    try:
        await client.start("unrecordable", {"fixed": str(fixed)}, run_id="held-1")
        await _status_is(client, "held-1", "blocked")
        status = await client.status("held-1")
        assert status.error is not None and status.error.type == "UnrecordableResult"
        assert "_Response" in status.error.message
        runner.kill()
        fixed.touch()
        runner = RunnerProcess(nats_server.url, names, exec_log, tag="b")

        async def held_again() -> bool:
            return "run blocked" in runner.output()  # logged when its replay holds the run

        await eventually(held_again, timeout=30, what="the new runner to replay the held run")
        assert executions(exec_log) == ["held-1/post"]  # a replay does not repeat the effect
        assert await client.resume("held-1")
        assert await client.result("held-1", timeout=30) == 7
        assert executions(exec_log) == ["held-1/post", "held-1/post"]

        # The run moved on after its resume: it is no longer marked waiting, so no
        # runner replays it again at its start or its next scan.
        async def unmarked() -> bool:
            return "held-1" not in [r async for r, _, _ in log.waiting_runs()]

        await eventually(unmarked, timeout=10, what="held-1's waiting mark to be cleared")
    finally:
        runner.kill()
