"""W1: one sequential 10-step no-op run end to end (client.start -> client.result)."""

from __future__ import annotations

import statistics
import time
from datetime import datetime

from jetlane import Client

from ._harness import Bench, runner
from ._stats import Goal
from .jobs import jobs

STEPS = 10


def stamp(text: str) -> float:
    """A ``Nats-Time-Stamp`` (RFC 3339, ns) as epoch seconds."""
    return datetime.fromisoformat(text).timestamp()


async def run(bench: Bench) -> None:
    s = bench.settings
    names = bench.names("w1")
    per_round = s.pick(5, 30)
    run_ms = bench.figure("W1", "run_ms", "ms", note=f"{STEPS} no-op steps, start -> result")
    step_ms = bench.figure(
        "W1",
        "step_ms",
        "ms",
        floor="floor.publish_p50",
        goal=Goal("<=", 2.0, on_ratio=True),
        note="run_ms / 10",
    )
    start_ms = bench.figure("W1", "start_ms", "ms", note="client.start alone")
    server_ms = bench.figure(
        "W1", "server_span_ms", "ms", note="start -> run_completed, server timestamps"
    )
    log = await bench.open_log(names)
    client = Client(log)
    async with runner(bench, names, jobs()):
        await (await client.start("bench-steps", {"n": STEPS})).result(timeout=30)  # warm-up
        for r in range(s.rounds):
            totals, starts, spans = [], [], []
            with bench.profiled("W1", r == 0):
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    handle = await client.start("bench-steps", {"n": STEPS})
                    t1 = time.perf_counter()
                    await handle.result(timeout=30)
                    t2 = time.perf_counter()
                    totals.append((t2 - t0) * 1000)
                    starts.append((t1 - t0) * 1000)
                    history = await log.read(handle.run_id)
                    spans.append((stamp(history[-1].time) - stamp(history[0].time)) * 1000)
            run_ms.samples.append(statistics.median(totals))
            step_ms.samples.append(statistics.median(totals) / STEPS)
            start_ms.samples.append(statistics.median(starts))
            server_ms.samples.append(statistics.median(spans))
    await log.close()
