"""Long and hung steps: in-progress acks keep a long step's delivery, timeouts end hung ones."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jetlane import (
    Client,
    Context,
    Log,
    RetryPolicy,
    RunFailedError,
    define_job,
    step,
)
from jetlane import wire as h

from .helpers import StartRunner

pytestmark = pytest.mark.slow


async def test_step_longer_than_ack_wait_is_not_redelivered(
    client: Client, log: Log, start_runner: StartRunner
) -> None:
    calls: list[str] = []

    async def handler(ctx: Context, input: dict[str, Any]) -> str:
        async def long() -> str:
            calls.append(ctx.step_key)
            await asyncio.sleep(float(input["seconds"]))
            return "done"

        return await step.do("long", long, retries=RetryPolicy(limit=3, delay=0.05))

    job = define_job(name="long", handler=handler, register=False)
    ack_wait = 1.0
    # Two runners: a redelivery would reach the other one.
    await start_runner([job], ack_wait=ack_wait)
    await start_runner([job], ack_wait=ack_wait)
    await client.start("long", {"seconds": 3.5 * ack_wait}, run_id="long1")
    assert await client.result("long1", timeout=30) == "done"
    info = await log.js.consumer_info(log.names.stream, log.names.consumer)
    assert info.config.ack_wait == pytest.approx(ack_wait)
    assert info.num_redelivered == 0, "the long step's delivery came back despite in-progress acks"
    assert calls == ["long1/long"]
    journal = [m.body for m in await log.read("long1") if m.direction == "out"]
    done = [b for b in journal if isinstance(b, h.StepCompleted)]
    assert [(b.step, b.attempt) for b in done] == [("long", 1)]
    assert done[0].duration_ms > 3 * ack_wait * 1000


async def test_hung_step_times_out_and_is_retried_per_policy(
    client: Client, log: Log, start_runner: StartRunner
) -> None:
    attempts: list[int] = []

    async def handler(ctx: Context, input: None) -> str:
        async def maybe_hang() -> str:
            attempts.append(len(attempts) + 1)
            if len(attempts) < 3:
                await asyncio.Event().wait()  # hangs until cancelled by the timeout
            return "third time"

        policy = RetryPolicy(limit=4, delay=0.05, backoff="constant")
        return await step.do("hang", maybe_hang, retries=policy, timeout=0.3)

    job = define_job(name="hang", handler=handler, register=False)
    await start_runner([job])
    await client.start("hang", None, run_id="hang1")
    assert await client.result("hang1", timeout=30) == "third time"
    assert attempts == [1, 2, 3]
    journal = [m.body for m in await log.read("hang1") if m.direction == "out"]
    failed = [b for b in journal if isinstance(b, h.StepFailed)]
    assert [(b.step, b.attempt) for b in failed] == [("hang", 1), ("hang", 2)]
    for entry in failed:
        assert entry.error.type == "StepTimeout"
        assert "timed out after 0.3s" in entry.error.message
        assert entry.retry_at is not None
    completed = [b for b in journal if isinstance(b, h.StepCompleted)]
    assert [(b.step, b.attempt) for b in completed] == [("hang", 3)]


async def test_hung_step_exhausts_its_attempts_and_fails_the_run(
    client: Client, log: Log, start_runner: StartRunner
) -> None:
    calls = 0

    async def handler(ctx: Context, input: None) -> str:
        async def hang() -> str:
            nonlocal calls
            calls += 1
            await asyncio.Event().wait()
            return "never"

        policy = RetryPolicy(limit=1, delay=0.05, backoff="constant")
        return await step.do("hang", hang, retries=policy, timeout=0.2)

    job = define_job(name="hang-forever", handler=handler, register=False)
    await start_runner([job])
    await client.start("hang-forever", None, run_id="hang2")
    with pytest.raises(RunFailedError) as failure:
        await client.result("hang2", timeout=30)
    assert failure.value.type == "StepFailed"
    assert "'hang' failed after 2 attempt(s)" in failure.value.message
    assert calls == 2
    journal = [m.body for m in await log.read("hang2") if m.direction == "out"]
    failed = [b for b in journal if isinstance(b, h.StepFailed)]
    assert [(b.attempt, b.retry_at is None) for b in failed] == [(1, False), (2, True)]
    assert {b.error.type for b in failed} == {"StepTimeout"}
