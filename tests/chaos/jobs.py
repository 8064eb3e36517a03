"""Jobs for the chaos, cluster and bad-input tests.

Every step execution appends ``<step_key>`` to ``$JETLANE_TEST_EXEC_LOG`` (one
line, written before the step returns), so a test can count how often a step
function really ran, across processes that were SIGKILLed.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from jetlane import Context, RetryPolicy, job, step

RETRY = RetryPolicy(limit=4, delay=0.1, backoff="constant")
STEPS = 20
SLEEPS = {6: 0.3, 13: 0.2}
WAIT = 10
FLAKY = {3, 15}


def record(ctx: Context) -> None:
    path = os.environ.get("JETLANE_TEST_EXEC_LOG")
    if path:
        with open(path, "a") as out:
            out.write(f"{ctx.step_key}\n")


def _first_time(ctx: Context) -> bool:
    """True once per step key (a marker file next to the exec log)."""
    path = os.environ.get("JETLANE_TEST_EXEC_LOG")
    if not path:
        return False
    marker = Path(path).with_name("markers") / ctx.step_key.replace("/", "__")
    marker.parent.mkdir(exist_ok=True)
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return False
    return True


def expected_output(add: int) -> int:
    """What ``chaos`` returns for an event payload ``{"add": add}``."""
    return sum(i for i in range(STEPS) if i not in SLEEPS and i != WAIT) + add


@job("chaos")
async def chaos(ctx: Context, input: dict[str, Any]) -> int:
    """20 steps: 17 ``step.do`` (two fail their first attempt), two sleeps, one awaited event."""
    total = 0
    for i in range(STEPS):
        if i in SLEEPS:
            await step.sleep(f"nap{i}", SLEEPS[i])
            continue
        if i == WAIT:
            payload = await step.wait_for_event("go", type="go", timeout="10m")
            total += int(payload["add"])
            continue

        async def work(i: int = i) -> int:
            record(ctx)
            if i in FLAKY and _first_time(ctx):
                raise RuntimeError(f"flaky step {i} fails its first execution")
            await asyncio.sleep(0.005 * (i % 4))
            return i

        total += await step.do(f"s{i}", work, retries=RETRY)
    return total


@job("steady")
async def steady(ctx: Context, input: dict[str, Any]) -> int:
    """``n`` quick steps and one short sleep: a workload for the cluster test."""
    total = 0
    for i in range(int(input["n"])):

        async def work(i: int = i) -> int:
            record(ctx)
            await asyncio.sleep(0.02)
            return i

        total += await step.do("work", work, retries=RETRY)
        if i == 1:
            await step.sleep("nap", 0.3)
    return total


@job("echo")
async def echo(ctx: Context, input: dict[str, Any]) -> Any:
    """One step that returns the input's ``value``."""

    async def work() -> Any:
        record(ctx)
        return input["value"]

    return await step.do("echo", work, retries=RETRY)
