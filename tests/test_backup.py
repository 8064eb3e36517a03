"""A restore drill (docs/deploy.md, "Backup and disaster recovery") on one real server.

Runs are created (some completed, one parked on a wait for an event, one on a
sleep), the server is stopped and its store copied cold (what a VolumeSnapshot of
a stopped node's PVC is), a fresh server starts on the copy, and a fresh runner
finishes the parked runs: histories are identical, the sleep's durable timer
fires from the restored schedule, the event is delivered.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from jetlane import (
    Client,
    ConnectOptions,
    Context,
    Job,
    Log,
    Names,
    Runner,
    RunnerConfig,
    define_job,
    step,
)
from jetlane.embedded import EmbeddedNats

from .helpers import eventually

NAMES = Names()


async def _quick(ctx: Context, n: int) -> int:
    return await step.do("double", lambda: n * 2)


async def _waiter(ctx: Context) -> str:
    got = await step.wait_for_event("go", type="go", timeout="1h")
    return await step.do("answer", lambda: f"got {got}")


async def _sleeper(ctx: Context) -> str:
    await step.sleep("nap", 2.0)
    return await step.do("wake", lambda: "rested")


JOBS = [
    define_job(name="quick", handler=_quick, register=False),
    define_job(name="waiter", handler=_waiter, register=False),
    define_job(name="sleeper", handler=_sleeper, register=False),
]


@asynccontextmanager
async def running(url: str, jobs: list[Job]) -> AsyncIterator[Client]:
    """A runner serving ``jobs`` and a client, on their own connections to ``url``."""
    runner_log = await Log.open(ConnectOptions(url=url), NAMES, lease_ttl=5.0)
    runner = Runner(runner_log, {j.name: j for j in jobs}, config=RunnerConfig(drain_timeout=5))
    task = asyncio.create_task(runner.run())
    log = await Log.open(ConnectOptions(url=url), NAMES)
    try:
        await asyncio.wait_for(runner.ready.wait(), 10)
        yield Client(log)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 15)
        await runner_log.close()
        await log.close()


async def _is(client: Client, run_id: str, status: str) -> bool:
    return (await client.status(run_id)).status == status


@pytest.mark.slow
async def test_restore_drill_from_a_cold_copy(tmp_path: Path) -> None:
    original = EmbeddedNats(tmp_path / "original").start()
    try:
        async with running(original.url, JOBS) as client:
            for i in range(3):
                await client.start("quick", i, run_id=f"done{i}")
            await client.start("waiter", run_id="parked-wait")
            await client.start("sleeper", run_id="parked-sleep")
            for i in range(3):
                assert await client.result(f"done{i}", timeout=20) == i * 2
            await eventually(lambda: _is(client, "parked-wait", "waiting"), what="the wait")
            await eventually(lambda: _is(client, "parked-sleep", "sleeping"), what="the sleep")
            ids = [f"done{i}" for i in range(3)] + ["parked-wait", "parked-sleep"]
            before = {run_id: await client.log.read(run_id) for run_id in ids}
        # The backup: the server stopped (a clean shutdown flushes the store), its
        # store directory copied as it is.
        original.stop()
        backup = tmp_path / "backup"
        shutil.copytree(original.data_dir / "jetstream", backup / "jetstream")
    finally:
        original.cleanup()

    # Disaster: the original is gone. Restore into a fresh server on a fresh port.
    restored_dir = tmp_path / "restored"
    shutil.copytree(backup, restored_dir)
    restored = EmbeddedNats(restored_dir).start()
    try:
        log = await Log.open(ConnectOptions(url=restored.url), NAMES)
        try:
            after = {run_id: await log.read(run_id) for run_id in before}
        finally:
            await log.close()
        assert after == before  # every entry: sequence, kind, body, time

        async with running(restored.url, JOBS) as client:
            # The sleep's schedule came back with JETLANE_TIMERS: it fires by itself.
            assert await client.result("parked-sleep", timeout=30) == "rested"
            await client.send_event("parked-wait", "go", "after the restore")
            assert await client.result("parked-wait", timeout=20) == "got after the restore"
            assert (await client.status("done0")).status == "completed"
            history = await client.log.read("parked-sleep")
            assert [m.kind for m in history].count("timer") >= 1  # the durable timer
            # What was there before the restore is the prefix of each history now.
            for run_id in ("parked-wait", "parked-sleep"):
                now = await client.log.read(run_id)
                assert now[: len(before[run_id])] == before[run_id]
    finally:
        restored.cleanup()
