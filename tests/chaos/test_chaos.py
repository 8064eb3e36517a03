"""The chaos run: three runner processes, one SIGKILLed every few hundred ms, nothing lost.

Sizes come from the environment so that ``make test`` runs a small chaos and
``make chaos`` the full one::

    JETLANE_CHAOS_RUNS      runs to start (default 20; make chaos: 200)
    JETLANE_CHAOS_KILL_MS   "min-max" pause between kills in ms (default 200-600)
    JETLANE_CHAOS_TIMEOUT   seconds for every run to finish (default 150)
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from pathlib import Path

import pytest

from jetlane import Client, ConnectOptions, Log, Names

from .harness import ChaosRunner, attempts, executions, final_outcomes
from .jobs import STEPS, expected_output

pytestmark = pytest.mark.slow

RUNS = int(os.environ.get("JETLANE_CHAOS_RUNS", "20"))
KILL_MS = tuple(int(x) for x in os.environ.get("JETLANE_CHAOS_KILL_MS", "200-600").split("-"))
TIMEOUT = float(os.environ.get("JETLANE_CHAOS_TIMEOUT", "150"))
RUNNERS = 3


@pytest.mark.timeout(TIMEOUT + 120)
async def test_chaos_sigkill_random_runners(
    options: ConnectOptions,
    names: Names,
    tmp_path: Path,
    rng: random.Random,
    capsys: pytest.CaptureFixture[str],
) -> None:
    exec_log = tmp_path / "executions.txt"
    log = await Log.open(options, names, lease_ttl=2.0)
    client = Client(log)
    spawned = 0

    def spawn() -> ChaosRunner:
        nonlocal spawned
        spawned += 1
        return ChaosRunner(
            options.url, names, exec_log, tag=str(spawned), flags={"ack_wait": 2, "lease_ttl": 2}
        )

    runners = [spawn() for _ in range(RUNNERS)]
    kills = 0
    done = asyncio.Event()

    async def chaos_monkey() -> None:
        nonlocal kills
        while not done.is_set():
            pause = rng.uniform(KILL_MS[0], KILL_MS[-1]) / 1000
            try:
                await asyncio.wait_for(done.wait(), pause)
            except TimeoutError:
                index = rng.randrange(RUNNERS)
                runners[index].kill()
                kills += 1
                runners[index] = spawn()

    ids = [f"c{i}" for i in range(RUNS)]

    async def send_event(index: int) -> None:
        # Some events arrive before the wait, some while the run waits.
        await asyncio.sleep(rng.uniform(0, 3))
        await client.send_event(ids[index], "go", {"add": index})

    monkey = asyncio.create_task(chaos_monkey())
    try:
        for chunk in range(0, RUNS, 50):
            await asyncio.gather(
                *(client.start("chaos", {}, run_id=r) for r in ids[chunk : chunk + 50])
            )
        await asyncio.gather(*(send_event(i) for i in range(RUNS)))
        pending = set(ids)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while pending and loop.time() < deadline:
            statuses = await asyncio.gather(*(client.status(r) for r in sorted(pending)))
            pending -= {s.run_id for s in statuses if s.done}
            if pending:
                await asyncio.sleep(0.5)
    finally:
        done.set()
        await monkey
        for runner in runners:
            runner.terminate()
        for runner in runners:
            await asyncio.to_thread(runner.wait, 30)

    lost = 0
    duplicates = 0
    recorded_attempts = 0
    problems: list[str] = []
    ran = executions(exec_log)
    for index, run_id in enumerate(ids):
        status = await client.status(run_id)
        if status.status != "completed" or status.output != expected_output(index):
            lost += 1
            problems.append(f"{run_id}: {status.status} {status.output!r} {status.error}")
        history = await log.read(run_id)
        outcomes = final_outcomes(history)
        tries = attempts(history)
        duplicates += sum(n - 1 for n in outcomes.values() if n > 1)
        duplicates += sum(n - 1 for n in tries.values() if n > 1)
        if status.status == "completed" and len(outcomes) != STEPS:
            problems.append(f"{run_id}: {len(outcomes)} step outcomes, expected {STEPS}")
        recorded_attempts += len(tries)
        per_step = Counter(step for step, _ in tries)
        for step, n in per_step.items():
            if ran[f"{run_id}/{step}"] < n:
                problems.append(f"{run_id}/{step}: {n} attempts recorded, fewer executions")
    reexecuted = sum(ran.values()) - recorded_attempts
    line = (
        f"runs={RUNS} kills={kills} lost={lost} "
        f"duplicate_outcomes={duplicates} reexecuted_steps={reexecuted}"
    )
    with capsys.disabled():
        print(f"\n{line}")
    await log.close()
    assert kills > 0
    assert (lost, duplicates, problems) == (0, 0, []), line
    assert reexecuted >= 0
