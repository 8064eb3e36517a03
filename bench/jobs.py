"""The jobs the workloads run (registered, so a runner process serves them by name)."""

from __future__ import annotations

import asyncio
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


@register("bench-fan-out", max_parallel=1000)
async def fan_out(ctx: Context, input: dict[str, Any]) -> int:
    """``n`` parallel no-op steps (or steps that sleep ``sleep`` seconds) (W8)."""
    seconds = float(input.get("sleep", 0))

    async def nap() -> None:
        await asyncio.sleep(seconds)

    fn = nap if seconds else noop
    done = await asyncio.gather(*(step.do(f"p{i}", fn) for i in range(int(input["n"]))))
    return len(done)


@register("bench-parent")
async def parent(ctx: Context, input: dict[str, Any]) -> Any:
    """Invoke one child run and return its output (W9)."""
    return await step.invoke("child", job="bench-child", input=input)


@register("bench-child")
async def child(ctx: Context, input: dict[str, Any]) -> int:
    await step.do("s", noop)
    return 1


def jobs() -> dict[str, Job]:
    """The bench jobs by name."""
    return {name: j for name, j in registry().items() if name.startswith("bench-")}
