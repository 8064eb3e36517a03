"""W2: many concurrent 10-step runs; steps/s with one runner in-process, one and two processes."""

from __future__ import annotations

import asyncio
import time

from jetlane import Client, Names

from ._harness import Bench, RunnerProcess, Watcher, runner
from ._stats import Figure, Goal
from .jobs import jobs

STEPS = 10


async def _round(bench: Bench, client: Client, watcher: Watcher, runs: int, done: int) -> float:
    """Start ``runs`` runs at once; steps/s from the first start to the last completion."""
    t0 = time.perf_counter()
    await asyncio.gather(*(client.start("bench-steps", {"n": STEPS}) for _ in range(runs)))
    if not await watcher.wait("run_completed", done + runs, timeout=300):
        raise RuntimeError(f"W2: only {watcher.counts['run_completed'] - done} of {runs} ended")
    return runs * STEPS / (time.perf_counter() - t0)


async def _measure(bench: Bench, names: Names, fig: Figure, runs: int, label: str) -> None:
    log = await bench.open_log(names)
    client = Client(log)
    async with Watcher(bench, names, {"run_completed"}) as watcher:
        done = 0
        await _round(bench, client, watcher, min(runs, 20), done)  # warm-up
        done += min(runs, 20)
        for r in range(bench.settings.rounds):
            with bench.profiled(label, r == 0):
                fig.samples.append(await _round(bench, client, watcher, runs, done))
            done += runs
    await log.close()


async def run(bench: Bench) -> None:
    s = bench.settings
    runs = s.pick(40, 200)
    concurrency = max(runs, 100)
    note = f"{runs} runs x {STEPS} steps started at once; concurrency={concurrency}"
    inproc = bench.figure(
        "W2",
        "steps_per_s",
        "steps/s",
        floor="floor.publish_async",
        goal=Goal(">=", 15000),
        note=f"{note}; runner in the bench process",
    )
    names = bench.names("w2a")
    async with runner(bench, names, jobs(), concurrency=concurrency):
        await _measure(bench, names, inproc, runs, "W2")

    for procs in (1, 2):
        fig = bench.figure(
            "W2",
            f"steps_per_s_{procs}proc",
            "steps/s",
            floor="floor.publish_async",
            note=f"{note}; {procs} runner process(es)",
        )
        names = bench.names(f"w2p{procs}")
        log = await bench.open_log(names)  # the stream exists before the runners race for it
        await log.close()
        started = [
            await RunnerProcess(
                bench, names, f"W2-{procs}proc-{i}", concurrency=concurrency
            ).start()
            for i in range(procs)
        ]
        try:
            await _measure(bench, names, fig, runs, f"W2-{procs}proc-client")
        finally:
            for proc in started:
                await proc.stop()
