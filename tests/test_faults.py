"""Multi-process behaviour: crashes, two runners, drains, a server restart."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jetlane import Client, ConnectOptions, Log, Names
from jetlane.embedded import EmbeddedNats

from .chaos.harness import final_outcomes
from .helpers import eventually
from .processes import RunnerProcess, executions

pytestmark = pytest.mark.slow

Spawn = Callable[..., RunnerProcess]


@pytest.fixture
def exec_log(tmp_path: Path) -> Path:
    return tmp_path / "executions.txt"


@pytest.fixture
def spawn(nats_server: EmbeddedNats, names: Names, exec_log: Path) -> Iterator[Spawn]:
    procs: list[RunnerProcess] = []

    def start(url: str | None = None, **flags: float) -> RunnerProcess:
        proc = RunnerProcess(url or nats_server.url, names, exec_log, flags=flags)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


async def steps_done(client: Client, run_id: str) -> int:
    return len([m async for m in client.history(run_id) if m.kind == "step_completed"])


async def test_sigkill_mid_run_second_runner_finishes(
    client: Client, log: Log, spawn: Spawn, exec_log: Path
) -> None:
    first = spawn()
    await client.start("slow-steps", {"n": 6, "delay": 0.3}, run_id="k1")

    async def two_done() -> bool:
        return await steps_done(client, "k1") >= 2

    await eventually(two_done, timeout=20, what="two steps")
    first.kill()
    spawn()
    assert await client.result("k1", timeout=30) == [0, 1, 2, 3, 4, 5]
    counts = final_outcomes(await log.read("k1"))
    assert set(counts.values()) == {1} and len(counts) == 6
    ran = Counter(executions(exec_log))
    assert all(ran[f"k1/work{'#' + str(i) if i > 1 else ''}"] >= 1 for i in range(1, 7))
    assert sum(ran.values()) <= 7  # at most the step in flight ran twice


async def test_two_runners_finish_fifty_runs(client: Client, log: Log, spawn: Spawn) -> None:
    spawn()
    spawn()
    ids = [f"m{i}" for i in range(50)]
    await asyncio.gather(
        *(client.start("mixed", {"n": 3, "sleep": 0.3}, run_id=run_id) for run_id in ids)
    )
    for i, run_id in enumerate(ids):
        if i % 2:
            await client.send_event(run_id, "go", {"add": i})

    async def all_waiting_or_done() -> bool:
        statuses = await asyncio.gather(*(client.status(r) for r in ids[::2]))
        return all(s.status in ("waiting", "completed") for s in statuses)

    await eventually(all_waiting_or_done, timeout=60, what="even runs to wait")
    for i, run_id in enumerate(ids):
        if not i % 2:
            await client.send_event(run_id, "go", {"add": i})
    results = await asyncio.gather(*(client.result(r, timeout=60) for r in ids))
    assert results == [3 + i for i in range(50)]
    for run_id in ids:
        counts = final_outcomes(await log.read(run_id))
        assert set(counts.values()) == {1}, (run_id, counts)
        assert len(counts) == 5


async def test_event_during_a_long_step_does_not_rerun_it(
    client: Client, spawn: Spawn, exec_log: Path
) -> None:
    spawn()
    spawn()
    await client.start("long-step", {"seconds": 3}, run_id="l1")

    async def started() -> bool:
        return "l1/long" in executions(exec_log)

    await eventually(started, timeout=20, what="the long step to start")
    await client.send_event("l1", "go", "now")
    assert await client.result("l1", timeout=30) == "now"
    assert executions(exec_log).count("l1/long") == 1


async def test_sigterm_drains_the_step_in_flight(
    client: Client, log: Log, spawn: Spawn, exec_log: Path
) -> None:
    runner = spawn(drain_timeout=10)
    await client.start("long-step", {"seconds": 1.5}, run_id="t1")

    async def started() -> bool:
        return "t1/long" in executions(exec_log)

    await eventually(started, timeout=20, what="the long step to start")
    runner.terminate()
    assert await asyncio.to_thread(runner.wait, 20) == 0, runner.output()
    spawn()
    await client.send_event("t1", "go", "after")
    assert await client.result("t1", timeout=30) == "after"
    assert set(final_outcomes(await log.read("t1")).values()) == {1}
    assert executions(exec_log).count("t1/long") == 1


async def test_server_restart_timers_fire_after_outage(
    tmp_path: Path, names: Names, spawn: Spawn
) -> None:
    server = EmbeddedNats(tmp_path / "restart").start()
    try:
        options = ConnectOptions(url=server.url)
        log = await Log.open(options, names, lease_ttl=2.0)
        client = Client(log)
        runner = spawn(url=server.url)
        ids = [f"s{i}" for i in range(5)]
        for run_id in ids:
            await client.start("mixed", {"n": 2, "sleep": 1.0}, run_id=run_id)

        async def all_sleeping() -> bool:
            statuses = await asyncio.gather(*(client.status(r) for r in ids))
            return all(s.status == "sleeping" for s in statuses)

        await eventually(all_sleeping, timeout=20, what="runs to sleep")
        until = max([(await client.status(r)).until or "" for r in ids])
        server.kill()
        # Let the timers come due while the server is down.
        await asyncio.sleep(max(0.0, h_parse(until) - _now()) + 0.5)
        server.start()
        for run_id in ids:

            async def send(r: str = run_id) -> None:
                await client.send_event(r, "go", {"add": 1})

            await _retry(send)
        try:
            results = await asyncio.gather(*(client.result(r, timeout=30) for r in ids))
        except TimeoutError:
            raise AssertionError(runner.output()[-3000:]) from None
        assert results == [2] * 5
        await log.close()
    finally:
        server.cleanup()


def h_parse(text: str) -> float:
    from jetlane._core.durations import parse_time

    return parse_time(text).timestamp()


def _now() -> float:
    import time

    return time.time()


async def _retry(op: Callable[[], Any], timeout: float = 20.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await op()
        except Exception:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)
