"""The jobs the workloads run (registered, so a runner process serves them by name)."""

from __future__ import annotations

import time
from typing import Any

from jetlane import Context, Job, registry, step
from jetlane import job as register


def noop() -> None:
    return None


@register("bench-steps")
async def steps(ctx: Context, input: dict[str, Any]) -> int:
    """``n`` no-op steps in sequence (W1, W2)."""
    n = int(input["n"])
    for _ in range(n):
        await step.do("s", noop)
    return n


@register("bench-long")
async def long_run(ctx: Context, input: dict[str, Any]) -> int:
    """``n`` steps that record when they ran, then ``waits`` events in turn (W4).

    Each wait is a point where the bench restarts the runner, so the event
    that ends it is served by a runner that has never seen the run.
    """
    n = int(input["n"])
    for _ in range(n):
        await step.do("t", time.time)
    for _ in range(int(input.get("waits", 0))):
        await step.wait_for_event("go", type="go", timeout="1h")
    return n


@register("bench-sleep")
async def sleeper(ctx: Context, input: dict[str, Any]) -> float:
    """Sleep, then record the wall time the handler woke at (W3)."""
    await step.sleep("nap", float(input["seconds"]))
    woke: float = await step.do("woke", time.time)
    return woke


@register("bench-park")
async def parked(ctx: Context, input: dict[str, Any]) -> None:
    """Park on a sleep (or on an event when ``wait``), then end (W5)."""
    if input.get("wait"):
        await step.wait_for_event("go", type="go", timeout="1h")
    else:
        await step.sleep("nap", float(input["seconds"]))


def jobs() -> dict[str, Job]:
    """The bench jobs by name."""
    return {name: j for name, j in registry().items() if name.startswith("bench-")}
