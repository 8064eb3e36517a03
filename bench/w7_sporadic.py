"""W7: lateness of sporadic starts and events: how long a stored input waits for a runner.

An idle runner, inputs that come one at a time, some right after a run ended
on its timers, some after idle gaps (the patterns that once left a start
waiting a second for a lingering pull).
Lateness is measured on the server's clock: from the input's stream timestamp
to the first journal entry the runner wrote because of it. Both p50 and p99
are reported: a median hides a fetch timeout hit by one start in three.
"""

from __future__ import annotations

import asyncio
import random

from jetlane import Client
from jetlane import wire as h

from ._harness import Bench, runner
from ._stats import Goal, percentile
from .jobs import jobs
from .w1_latency import stamp


async def run(bench: Bench) -> None:
    s = bench.settings
    names = bench.names("w7")
    per_round = s.pick(10, 40)
    start_p50 = bench.figure("W7", "start_late_p50_ms", "ms", note="start stored -> first entry")
    start_p99 = bench.figure(
        "W7", "start_late_p99_ms", "ms", goal=Goal("<=", 50), note="sporadic starts, p99"
    )
    event_p50 = bench.figure("W7", "event_late_p50_ms", "ms", note="event stored -> event_received")
    event_p99 = bench.figure(
        "W7", "event_late_p99_ms", "ms", goal=Goal("<=", 50), note="sporadic events, p99"
    )
    log = await bench.open_log(names)
    client = Client(log)
    rng = random.Random(7)
    async with runner(bench, names, jobs()):
        for _ in range(s.rounds):
            starts: list[float] = []
            events: list[float] = []
            for _ in range(per_round):
                # A run that ends on a sleep: its timer fires twice (in-process and
                # durable), then the next start comes at once (the pattern in which
                # a start once waited a full second for a lingering pull).
                napper = await client.start("bench-sleep", {"seconds": 0.2})
                await napper.result(timeout=30)
                nap = await log.read(napper.id)
                starts.append((stamp(nap[1].time) - stamp(nap[0].time)) * 1000)
                await asyncio.sleep(rng.uniform(0.02, 0.3))  # the runner goes idle
                handle = await client.start("bench-long", {"n": 1, "waits": 1})
                await asyncio.sleep(rng.uniform(0.02, 0.3))
                await handle.send_event("go")
                await handle.result(timeout=30)
                history = await log.read(handle.id)
                start = next(m for m in history if isinstance(m.body, h.Start))
                first = next(m for m in history if m.direction == "out")
                event = next(m for m in history if isinstance(m.body, h.Event))
                got = next(m for m in history if isinstance(m.body, h.EventReceived))
                starts.append((stamp(first.time) - stamp(start.time)) * 1000)
                events.append((stamp(got.time) - stamp(event.time)) * 1000)
            start_p50.samples.append(percentile(starts, 50))
            start_p99.samples.append(percentile(starts, 99))
            event_p50.samples.append(percentile(events, 50))
            event_p99.samples.append(percentile(events, 99))
    await log.close()
