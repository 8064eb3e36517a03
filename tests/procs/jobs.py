"""Jobs for the multi-process tests; each step execution is appended to $JETLANE_TEST_EXEC_LOG."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from jetlane import Context, RetryPolicy, job, step

QUICK = RetryPolicy(limit=5, delay=0.05, backoff="constant")


def _record(ctx: Context) -> None:
    path = os.environ.get("JETLANE_TEST_EXEC_LOG")
    if path:
        with open(path, "a") as out:
            out.write(f"{ctx.step_key}\n")


@job("slow-steps")
async def slow_steps(ctx: Context, input: dict[str, Any]) -> list[int]:
    """``n`` steps of ``delay`` seconds each."""
    results = []
    for i in range(int(input["n"])):

        async def work(i: int = i) -> int:
            _record(ctx)
            await asyncio.sleep(float(input.get("delay", 0.1)))
            return i

        results.append(await step.do("work", work, retries=QUICK))
    return results


@job("mixed")
async def mixed(ctx: Context, input: dict[str, Any]) -> int:
    """Steps, a short sleep and an awaited event."""
    total = 0
    for i in range(int(input.get("n", 3))):

        async def work(i: int = i) -> int:
            _record(ctx)
            await asyncio.sleep(0.01)
            return i

        total += await step.do("work", work, retries=QUICK)
    await step.sleep("cool-down", float(input.get("sleep", 0.5)))
    payload = await step.wait_for_event("go", type="go", timeout="5m")
    return total + int(payload["add"])


@job("long-step")
async def long_step(ctx: Context, input: dict[str, Any]) -> str:
    """One long step, then a wait: an event during the step must not re-run it."""

    async def work() -> str:
        _record(ctx)
        await asyncio.sleep(float(input["seconds"]))
        return "done"

    await step.do("long", work)
    got = await step.wait_for_event("go", type="go", timeout="5m")
    return f"{got}"


@job("keyed")
async def keyed(ctx: Context, input: dict[str, Any]) -> str:
    """An idempotency key taken in the handler and handed to a long step."""
    key = str(ctx.uuid())

    def note() -> None:
        path = os.environ.get("JETLANE_TEST_EXEC_LOG")
        if path:
            with open(path, "a") as out:
                out.write(f"{ctx.step_key}={key}\n")

    async def charge() -> str:
        note()
        await asyncio.sleep(float(input["seconds"]))
        return key

    return await step.do("charge", charge, retries=QUICK)
