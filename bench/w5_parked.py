"""W5: many parked runs: runner memory, start rate, and whether every one wakes when due."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import msgspec

from jetlane import Client

from ._harness import Bench, RunnerProcess, Watcher, gather_limited, rss_mb
from ._stats import Goal, percentile

BASE = 1000  # the RSS baseline: this many runs parked


async def run(bench: Bench) -> None:
    s = bench.settings
    n = s.pick(300, 10000, 100000)
    if not s.full:
        bench.note(f"W5 parks {n} runs (not 100,000: that takes minutes; --full runs it)")
    base = min(BASE, n // 3)
    names = bench.names("w5")
    rss_base = bench.figure("W5", "rss_base_mb", "MB", note=f"runner process, {base} parked")
    rss_n = bench.figure("W5", "rss_all_mb", "MB", note=f"runner process, {n} parked")
    growth = bench.figure("W5", "rss_growth_mb", "MB", goal=Goal("<=", 50))
    starts = bench.figure("W5", "start_rate", "runs/s", note="client.start acknowledged")
    parks = bench.figure(
        "W5", "park_rate", "runs/s", goal=Goal(">=", 5000), note="started and parked (timer_set)"
    )
    late50 = bench.figure(
        "W5", "wake_late_p50", "ms", note="run_completed seen - fire_at (all but the base runs)"
    )
    late99 = bench.figure("W5", "wake_late_p99", "ms")
    woken = bench.figure(
        "W5",
        "woken_fraction",
        "",
        goal=Goal(">=", 1.0),
        note="the base runs sleep 10 min: not awaited",
    )
    log = await bench.open_log(names)
    client = Client(log)
    proc = await RunnerProcess(bench, names, "W5").start()
    try:
        async with Watcher(bench, names, {"timer_set", "run_completed"}) as watcher:
            sleep = 600.0

            async def start(i: int) -> None:
                await client.start("bench-park", {"seconds": sleep})

            t0 = time.perf_counter()
            await gather_limited(base, 256, start)
            if not await watcher.wait("timer_set", base, timeout=300):
                raise RuntimeError("W5: the first runs did not park")
            # the rest sleep long enough that the last parks before the first wakes
            sleep = (n - base) * (time.perf_counter() - t0) / base * 2 + (2 if s.quick else 10)
            await asyncio.sleep(0.5)
            rss_base.samples.append(rss_mb(proc.pid))
            t0 = time.perf_counter()
            await gather_limited(n - base, 256, start)
            started = time.perf_counter() - t0
            if not await watcher.wait("timer_set", n, timeout=sleep + 60):
                raise RuntimeError(f"W5: only {watcher.counts['timer_set']} of {n} runs parked")
            parked = time.perf_counter() - t0
            if watcher.counts["run_completed"]:
                bench.note("W5: some runs woke before the last one parked")
            await asyncio.sleep(0.5)
            rss_n.samples.append(rss_mb(proc.pid))
            growth.samples.append(rss_n.samples[0] - rss_base.samples[0])
            starts.samples.append((n - base) / started)
            parks.samples.append((n - base) / parked)
            await watcher.wait("run_completed", n - base, timeout=sleep + 120)
            woken.samples.append(watcher.counts["run_completed"] / (n - base))
            late = []
            for run_id, seen in watcher.seen["run_completed"].items():
                body = msgspec.json.decode(watcher.bodies["timer_set"][run_id])
                late.append((seen - datetime.fromisoformat(body["fire_at"]).timestamp()) * 1000)
            late50.samples.append(percentile(late, 50))
            late99.samples.append(percentile(late, 99))
    finally:
        await proc.stop()
        await log.close()
