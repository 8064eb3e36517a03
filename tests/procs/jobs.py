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


# A deploy between runner processes, simulated: the "fixed" code path is taken once the
# file named by input["fixed"] exists (the test creates it before it starts the next
# runner, as a deploy would ship new code).


def _deployed(marker: str) -> bool:
    return os.path.exists(marker)


@job("buggy-carrier")
async def buggy_carrier(ctx: Context, input: dict[str, str]) -> str:
    """A bug in handler code after a step: blocks, then fixed code finishes the run."""

    def quote() -> dict[str, str]:
        _record(ctx)
        return {"carrier_name": "ups"}

    quoted = await step.do("quote", quote)
    if _deployed(input["fixed"]):
        return quoted["carrier_name"]
    return quoted["carrier"]  # the bug: KeyError


class _Response:
    def json(self) -> dict[str, int]:
        return {"id": 7}


@job("unrecordable")
async def unrecordable(ctx: Context, input: dict[str, str]) -> int:
    """A step that returns what cannot be recorded: the run is held at it."""
    fixed = _deployed(input["fixed"])

    def post() -> Any:
        _record(ctx)
        response = _Response()
        return response.json() if fixed else response

    body = await step.do("post", post)
    return int(body["id"])


@job("fan-out")
async def fan_out(ctx: Context, input: dict[str, Any]) -> list[int]:
    """``n`` parallel branches, each one step of ``delay`` seconds (issue 12's fan-out)."""

    def work(i: int) -> Any:
        async def run() -> int:
            _record(ctx)
            await asyncio.sleep(float(input.get("delay", 0.2)) * (1 + i % 4))
            return i

        return run

    n = int(input["n"])
    return list(await asyncio.gather(*(step.do(f"part:{i}", work(i)) for i in range(n))))


@job("order")
async def order(ctx: Context, input: dict[str, Any]) -> dict[str, Any]:
    """A parent: invokes a ``charge-child`` run (id given or derived) and returns its output."""
    charged = await step.invoke(
        "charge", job="charge-child", input={"cents": input["cents"]}, run_id=input.get("child")
    )
    return {"order": ctx.run_id, "charged": charged}


@job("charge-child")
async def charge_child(ctx: Context, input: dict[str, Any]) -> dict[str, Any]:
    """A child: one step, a short sleep, its result."""

    async def charge() -> str:
        _record(ctx)
        return f"receipt-{input['cents']}"

    receipt = await step.do("charge-card", charge, retries=QUICK)
    await step.sleep("settle", 0.3)
    return {"receipt": receipt}


@job("waiting-parent")
async def waiting_parent(ctx: Context, input: None) -> Any:
    """A parent waiting on a child that waits for an event."""
    return await step.invoke("child", job="waiting-child")


@job("waiting-child")
async def waiting_child(ctx: Context, input: None) -> Any:
    return await step.wait_for_event("go", type="go", timeout="10m")


@job("fan-out-capped", max_parallel=4)
async def fan_out_capped(ctx: Context, input: dict[str, Any]) -> list[int]:
    """``n`` parallel branches of one ``delay``-second step each, 4 at a time."""

    def work(i: int) -> Any:
        async def run() -> int:
            _record(ctx)
            await asyncio.sleep(float(input.get("delay", 0.2)))
            return i

        return run

    n = int(input["n"])
    return list(await asyncio.gather(*(step.do(f"part:{i}", work(i)) for i in range(n))))
