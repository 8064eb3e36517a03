"""W3: how late sleeps wake: short ones the runner holds, long ones across a runner restart."""

from __future__ import annotations

import asyncio
from datetime import datetime

from jetlane import Client, Log, Names
from jetlane import wire as h

from ._harness import Bench, Watcher, runner
from ._stats import Figure, Goal, percentile
from .jobs import jobs


async def lateness_ms(log: Log, run_ids: list[str]) -> list[float]:
    """For each run: when the handler woke minus the ``fire_at`` its ``timer_set`` recorded."""
    out = []
    for run_id in run_ids:
        history = await log.read(run_id)
        fire_at = next(m.body.fire_at for m in history if isinstance(m.body, h.TimerSet))
        woke = next(
            m.body.result
            for m in history
            if isinstance(m.body, h.StepCompleted) and m.body.step == "woke"
        )
        out.append((woke - datetime.fromisoformat(fire_at).timestamp()) * 1000)
    return out


async def _start(client: Client, count: int, base: float, spread: float) -> list[str]:
    handles = await asyncio.gather(
        *(client.start("bench-sleep", {"seconds": base + i * spread}) for i in range(count))
    )
    return [handle.id for handle in handles]


async def _short(bench: Bench, p50: Figure, p99: Figure) -> None:
    s = bench.settings
    names = bench.names("w3s")
    count = s.pick(10, 50)
    log = await bench.open_log(names)
    client = Client(log)
    async with (
        runner(bench, names, jobs()),
        Watcher(bench, names, {"run_completed"}) as watcher,
    ):
        for r in range(s.rounds):
            with bench.profiled("W3-short", r == 0):
                ids = await _start(client, count, 0.3, 0.01)
                if not await watcher.wait("run_completed", (r + 1) * count, timeout=60):
                    raise RuntimeError("W3: short sleeps did not all wake")
            late = await lateness_ms(log, ids)
            p50.samples.append(percentile(late, 50))
            p99.samples.append(percentile(late, 99))
    await log.close()


async def _long(bench: Bench, names: Names, p50: Figure, worst: Figure) -> None:
    s = bench.settings
    count = s.pick(5, 20)
    log = await bench.open_log(names)
    client = Client(log)
    async with Watcher(bench, names, {"timer_set", "run_completed"}) as watcher:
        for r in range(s.pick(1, max(2, s.rounds // 2))):
            async with runner(bench, names, jobs()):
                ids = await _start(client, count, 1.5, 0.03)
                if not await watcher.wait("timer_set", (r + 1) * count, timeout=30):
                    raise RuntimeError("W3: runs did not park")
            # runner stopped: its in-memory timers are gone; a fresh one gets the durable fire
            async with runner(bench, names, jobs()):
                if not await watcher.wait("run_completed", (r + 1) * count, timeout=60):
                    raise RuntimeError("W3: long sleeps did not all wake after the restart")
            late = await lateness_ms(log, ids)
            p50.samples.append(percentile(late, 50))
            worst.samples.append(max(late))
    await log.close()


async def run(bench: Bench) -> None:
    p50 = bench.figure(
        "W3", "short_late_p50", "ms", goal=Goal("<=", 5), note="0.3 s sleeps, runner holds run"
    )
    p99 = bench.figure("W3", "short_late_p99", "ms", goal=Goal("<=", 50))
    await _short(bench, p50, p99)
    lp50 = bench.figure(
        "W3",
        "restart_late_p50",
        "ms",
        goal=Goal("<=", 250),
        note="1.5 s sleeps, runner restarted meanwhile (durable schedule, 250 ms tick)",
    )
    worst = bench.figure("W3", "restart_late_max", "ms", note="worst run of the round")
    await _long(bench, bench.names("w3l"), lp50, worst)
