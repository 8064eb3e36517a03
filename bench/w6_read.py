"""W6: reading a 1,000-entry history with ``Log.read`` (batch direct get + msgspec decode)."""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime

from jetlane import wire as h

from ._harness import Bench
from ._stats import Goal

ENTRIES = 1000
READS = 10


async def run(bench: Bench) -> None:
    s = bench.settings
    names = bench.names("w6")
    read = bench.figure(
        "W6",
        "read_1000_ms",
        "ms",
        floor="floor.batch_get_1000",
        goal=Goal("<=", 10),
        note="Log.read of start + 999 step_completed",
    )
    fetch = bench.figure("W6", "fetch_raw_ms", "ms", note="Log.read_raw: the same, no decode")
    decode = bench.figure("W6", "decode_ms", "ms", note="Log.decode of the 1,000 raw messages")
    log = await bench.open_log(names)
    run_id = "history"
    start = await log.publish_input(run_id, h.Start(job="bench-steps", input={"n": ENTRIES - 1}))
    now = datetime.now(UTC).isoformat()
    seq = start.seq  # appends are fenced on the whole run's last sequence
    for i in range(ENTRIES - 1):
        body = h.StepCompleted(
            step=f"s#{i + 1}" if i else "s",
            attempt=1,
            result=None,
            started_at=now,
            duration_ms=0.01,
        )
        seq = await log.append(run_id, body, seq)
    assert len(await log.read(run_id)) == ENTRIES
    for r in range(s.rounds):
        reads, fetches, decodes = [], [], []
        with bench.profiled("W6", r == 0):
            for _ in range(READS):
                t0 = time.perf_counter()
                await log.read(run_id)
                reads.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                raws = [raw async for raw in log.read_raw(names.run(run_id))]
                fetches.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                for raw in raws:
                    log.decode(raw)
                decodes.append((time.perf_counter() - t0) * 1000)
        read.samples.append(statistics.median(reads))
        fetch.samples.append(statistics.median(fetches))
        decode.samples.append(statistics.median(decodes))
    await log.close()
