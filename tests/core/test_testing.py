"""jetlane.testing: the example jobs tested with the kit (no nats-server), and the kit itself."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jobs.approval import DemoApprovals, approval
from jobs.batch_etl import FlakyUpstream, Warehouse, batch_etl
from jobs.rolling_deploy import DemoDeployer, rolling_deploy

from jetlane import (
    Context,
    NonDeterminismError,
    RetryPolicy,
    RunFailedError,
    StepFailed,
    define_job,
    step,
)
from jetlane import wire as h
from jetlane.testing import Environment, replay, replay_async

ONCE = RetryPolicy(limit=0)


async def test_approval_is_applied_when_approved() -> None:
    gate = DemoApprovals()
    async with Environment(jobs=[approval], plugins={"approvals": gate}) as env:
        run = await env.start("approval", {"change": "CHG-1"})
        assert (await run.status()).status == "waiting"
        await run.send_event("approval", {"approved": True, "by": "ada"})
        result = await run.result()
        assert result == {"change": "CHG-1", "status": "applied", "by": "ada"}
        assert len(gate.applied) == 1


async def test_approval_times_out_after_its_timeout() -> None:
    async with Environment(jobs=[approval], plugins={"approvals": DemoApprovals()}) as env:
        run = await env.start("approval", {"change": "CHG-2", "timeout": "1h"})
        await env.advance("59m")
        assert (await run.status()).status == "waiting"
        await env.advance("2m")  # the wait's timer fires on the way
        assert (await run.status()).status == "completed"
        assert (await run.result())["status"] == "timed_out"
        kinds = [m.kind for m in await env.history(run.run_id)]
        assert "wait_timed_out" in kinds


async def test_rolling_deploy_retries_and_cool_downs_pass_without_waiting() -> None:
    deployer = DemoDeployer(fail_first=2)
    async with Environment(jobs=[rolling_deploy], plugins={"deployer": deployer}) as env:
        run = await env.start("rolling-deploy", {"environments": ["staging", "prod"]})
        result = await run.result()  # retry delays and 10-minute cool-downs: virtual time
        assert [r["env"] for r in result["results"]] == ["staging", "prod"]
        assert all(r["ok"] for r in result["results"])
        history = await env.history(run.run_id)
        failed = [m.body for m in history if isinstance(m.body, h.StepFailed)]
        assert [f.attempt for f in failed] == [1, 2, 1, 2]  # two failures per deploy


async def test_batch_etl_loads_every_batch_once() -> None:
    warehouse = Warehouse()
    upstream = FlakyUpstream(rate=1e9, flakiness=0.5, seed=3)
    async with Environment(
        jobs=[batch_etl], plugins={"upstream": upstream, "warehouse": warehouse}
    ) as env:
        run = await env.start("batch-etl", {"source": "orders", "batches": 3, "batch_size": 10})
        assert await run.result() == {"source": "orders", "batches": 3, "rows": 30}
        assert sorted(warehouse.loaded.values()) == [10, 10, 10]


async def test_cancel_pause_and_failures_mirror_the_client() -> None:
    async def napper(ctx: Context) -> str:
        await step.do("a", lambda: 1)
        await step.sleep("nap", "1h")
        await step.do("b", lambda: 2)
        return "done"

    async def broken(ctx: Context) -> None:
        await step.do("boom", _boom)

    jobs = [
        define_job(name="napper", handler=napper, register=False),
        define_job(name="broken", handler=broken, register=False),
    ]
    async with Environment(jobs=jobs) as env:
        paused = await env.start("napper")
        assert await env.pause(paused.id)
        await env.advance("2h")
        assert [m.kind for m in await env.history(paused.id)].count("step_completed") == 1
        assert await env.resume(paused.id)
        assert await paused.result() == "done"
        cancelled = await env.start("napper")
        assert await env.cancel(cancelled.id, "no")
        assert (await cancelled.status()).status == "cancelled"
        assert not await env.cancel(cancelled.id)
        failing = await env.start("broken")
        with pytest.raises(RunFailedError, match="StepFailed"):
            await failing.result()


async def test_the_pytest_fixture_makes_environments(
    jetlane_env: Callable[..., Environment],
) -> None:
    env = jetlane_env([approval], plugins={"approvals": DemoApprovals()})
    run = await env.start("approval", {"change": "CHG-F"})
    await run.send_event("approval", {"approved": False, "by": "bo"})
    assert (await run.result())["status"] == "rejected"


def _boom() -> None:
    raise ValueError("boom")


async def test_result_says_what_a_waiting_run_needs() -> None:
    async with Environment(jobs=[approval], plugins={"approvals": DemoApprovals()}) as env:
        run = await env.start("approval", {"change": "C", "timeout": "1h"})
        with pytest.raises(Exception, match="waiting for 'approval'"):
            await run.result(within="10m")


# -- replay ----------------------------------------------------------------------------


async def _recorded(tmp_path: Path) -> Path:
    """A history of a finished napper run, as `jetlane history RUN --json` writes it."""

    async def napper(ctx: Context) -> int:
        await step.do("one", lambda: 1)
        await step.sleep("nap", "1m")
        return await step.do("two", lambda: 2)

    async with Environment(jobs=[define_job(name="n", handler=napper, register=False)]) as env:
        run = await env.start("n")
        assert await run.result() == 2
        path = tmp_path / "run.jsonl"
        lines = [json.dumps(m.to_json()) for m in await env.history(run.run_id)]
        path.write_text("\n".join(lines) + "\n")
        return path


def test_replay_accepts_compatible_code_and_names_the_step_that_changed(
    tmp_path: Path,
) -> None:
    import asyncio

    path = asyncio.run(_recorded(tmp_path))

    async def same(ctx: Context) -> int:
        await step.do("one", lambda: 1)
        await step.sleep("nap", "1m")
        return await step.do("two", lambda: 2)

    async def renamed(ctx: Context) -> int:
        await step.do("one", lambda: 1)
        await step.sleep("nap", "1m")
        return await step.do("TWO", lambda: 2)

    replay(define_job(name="n", handler=same, register=False), path)
    with pytest.raises(NonDeterminismError) as caught:
        replay(define_job(name="n", handler=renamed, register=False), path)
    assert "'two'" in str(caught.value) and "'TWO'" in str(caught.value)


# -- what the second review found ---------------------------------------------------------


async def test_replay_takes_a_decorated_handler_and_checks_paused_runs(tmp_path: Path) -> None:
    async with Environment(jobs=[approval], plugins={"approvals": DemoApprovals()}) as env:
        run = await env.start("approval", {"change": "P"})
        assert await env.pause(run.run_id)  # paused while it waits: often so before a deploy
        path = tmp_path / "paused.jsonl"
        path.write_text("\n".join(json.dumps(m.to_json()) for m in await env.history(run.run_id)))
    await replay_async(approval, path)  # plugins stand in: step functions never run

    async def renamed(ctx: Context, input: Any) -> None:
        await step.do("ask-for-approval", lambda: None)

    with pytest.raises(NonDeterminismError, match="ask-for-approval"):
        await replay_async(define_job(name="approval", handler=renamed, register=False), path)


async def test_a_step_timeout_is_recorded_as_on_a_runner() -> None:
    async def slow(ctx: Context) -> str:
        try:
            await step.do("slow", lambda: asyncio.sleep(5), timeout=0.05, retries=ONCE)
        except StepFailed as exc:
            return exc.type
        return "?"

    async with Environment(jobs=[define_job(name="slow", handler=slow, register=False)]) as env:
        assert await (await env.start("slow")).result() == "StepTimeout"


async def test_non_determinism_in_a_run_that_never_parks_fails_the_test() -> None:
    calls = iter(range(100))

    async def nondet(ctx: Context) -> str:
        await step.do(f"fetch-{next(calls)}", lambda: 1)  # a name that changes per replay
        return "ok"

    async with Environment(jobs=[define_job(name="nd", handler=nondet, register=False)]) as env:
        with pytest.raises(NonDeterminismError, match="fetch-"):
            await env.start("nd")


async def test_a_bug_in_handler_code_shows_as_a_blocked_run_in_the_test_kit() -> None:
    async def buggy(ctx: Context, input: dict[str, str]) -> str:
        await step.do("look", lambda: 1)
        return input["carrier"]

    async with Environment([define_job(name="buggy", handler=buggy, register=False)]) as env:
        run = await env.start("buggy", {})
        with pytest.raises(RunFailedError) as info:
            await run.result()
        assert info.value.status == "blocked" and info.value.type == "KeyError"
        assert "after step 'look'" in info.value.message
