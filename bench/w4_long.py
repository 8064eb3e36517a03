"""W4: one long run: is step 10,000 as cheap as step 1, and how fast does a fresh runner resume?"""

from __future__ import annotations

import time

from jetlane import Client
from jetlane import wire as h

from ._harness import Bench, Watcher, runner
from ._stats import Goal
from .jobs import jobs

WINDOW = 100


async def run(bench: Bench) -> None:
    s = bench.settings
    n = s.pick(1000, 10000)
    resumes = s.rounds
    names = bench.names("w4")
    first = bench.figure("W4", "first100_ms_per_step", "ms", note=f"one run of {n} steps")
    last = bench.figure("W4", "last100_ms_per_step", "ms")
    ratio = bench.figure("W4", "last_vs_first", "x", goal=Goal("<=", 2.0))
    overall = bench.figure("W4", "all_ms_per_step", "ms", floor="floor.publish_p50")
    cold = bench.figure(
        "W4",
        "cold_resume_ms",
        "ms",
        goal=Goal("<=", 150),
        note=f"fresh runner: event sent -> event_received appended ({n}+ entries replayed)",
    )
    read = bench.figure("W4", "read_history_ms", "ms", note=f"Log.read of the {n}-step history")
    log = await bench.open_log(names)
    client = Client(log)
    async with Watcher(
        bench, names, {"wait_started", "event_received", "run_completed"}
    ) as watcher:
        async with runner(bench, names, jobs()):
            with bench.profiled("W4-steps"):
                t0 = time.perf_counter()
                handle = await client.start("bench-long", {"n": n, "waits": resumes})
                if not await watcher.wait("wait_started", 1, timeout=600):
                    raise RuntimeError("W4: the long run did not reach its first wait")
                wall = time.perf_counter() - t0
        history = await log.read(handle.id)
        times = [
            m.body.result
            for m in history
            if isinstance(m.body, h.StepCompleted) and m.body.step.split("#")[0] == "t"
        ]
        first.samples.append((times[WINDOW] - times[0]) / WINDOW * 1000)
        last.samples.append((times[-1] - times[-1 - WINDOW]) / WINDOW * 1000)
        ratio.samples.append(last.samples[0] / first.samples[0])
        overall.samples.append(wall / n * 1000)
        for r in range(resumes):
            async with runner(bench, names, jobs()):
                with bench.profiled("W4-resume", r == 0):
                    t0 = time.perf_counter()
                    await client.send_event(handle.id, "go")
                    if not await watcher.wait("event_received", r + 1, timeout=120):
                        raise RuntimeError("W4: the cold resume did not happen")
                    cold.samples.append((time.perf_counter() - t0) * 1000)
                # let the session end (park on the next wait, or complete) before the stop
                if r + 1 < resumes:
                    await watcher.wait("wait_started", r + 2, timeout=60)
                else:
                    await watcher.wait("run_completed", 1, timeout=60)
        for _ in range(s.rounds):
            t0 = time.perf_counter()
            await log.read(handle.id)
            read.samples.append((time.perf_counter() - t0) * 1000)
    await log.close()
