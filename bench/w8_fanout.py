"""W8: one run fanning out parallel steps (issue 12): 1,000 no-op steps in one
``asyncio.gather`` (steps/s, against W2's many-runs figure from the same suite run), and
100 steps that each sleep 50 ms in the step function (wall time: parallel, not 5 s)."""

from __future__ import annotations

import time

from jetlane import Client

from ._harness import Bench, Watcher, runner
from ._stats import Goal
from .jobs import jobs


async def run(bench: Bench) -> None:
    s = bench.settings
    wide = s.pick(200, 1000)
    steps = bench.figure(
        "W8",
        "fanout_steps_per_s",
        "steps/s",
        floor="W2.steps_per_s",
        goal=Goal(">=", 1 / 1.5, on_ratio=True),
        note=f"one run, {wide} parallel no-op steps (asyncio.gather); floor: W2 (many runs)",
    )
    sleepy = bench.figure(
        "W8",
        "fanout_sleep_wall",
        "s",
        goal=Goal("<=", 0.5),
        note="one run, 100 parallel steps that each sleep 50 ms (sequential: 5 s)",
    )
    names = bench.names("w8")
    async with runner(bench, names, jobs(), concurrency=100):
        log = await bench.open_log(names)
        client = Client(log)
        async with Watcher(bench, names, {"run_completed"}) as watcher:
            done = 0

            async def one(input: dict[str, float]) -> float:
                nonlocal done
                t0 = time.perf_counter()
                await client.start("bench-fan-out", input)
                done += 1
                if not await watcher.wait("run_completed", done, timeout=300):
                    raise RuntimeError("W8: the fan-out run did not end")
                return time.perf_counter() - t0

            await one({"n": 50})  # warm-up
            for r in range(s.rounds):
                with bench.profiled("W8", r == 0):
                    steps.samples.append(wide / await one({"n": wide}))
                sleepy.samples.append(await one({"n": 100, "sleep": 0.05}))
        await log.close()
