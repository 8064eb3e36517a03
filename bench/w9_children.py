"""W9: child runs (issue 12): 200 parent runs started at once, each invoking one child
run and returning its output; runs/s (parents and children both counted), against W2's
steps/s floor."""

from __future__ import annotations

import asyncio
import time

from jetlane import Client

from ._harness import Bench, Watcher, runner
from .jobs import jobs


async def run(bench: Bench) -> None:
    s = bench.settings
    parents = s.pick(40, 200)
    fig = bench.figure(
        "W9",
        "child_runs_per_s",
        "runs/s",
        note=f"{parents} parents started at once, each step.invoke-ing one child "
        "(a parent and its child count as 2 runs)",
    )
    names = bench.names("w9")
    async with runner(bench, names, jobs(), concurrency=max(2 * parents, 100)):
        log = await bench.open_log(names)
        client = Client(log)
        async with Watcher(bench, names, {"run_completed"}) as watcher:
            done = 0

            async def round_(n: int) -> float:
                nonlocal done
                t0 = time.perf_counter()
                await asyncio.gather(*(client.start("bench-parent", {}) for _ in range(n)))
                done += 2 * n
                if not await watcher.wait("run_completed", done, timeout=300):
                    raise RuntimeError("W9: not every parent and child ended")
                return 2 * n / (time.perf_counter() - t0)

            await round_(10)  # warm-up
            for r in range(s.rounds):
                with bench.profiled("W9", r == 0):
                    fig.samples.append(await round_(parents))
        await log.close()
