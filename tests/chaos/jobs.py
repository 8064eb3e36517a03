"""Jobs for the chaos, cluster, bad-input and invariant tests.

Every step execution appends ``<step_key>`` to ``$JETLANE_TEST_EXEC_LOG`` (one
line, written before the step returns), so a test can count how often a step
function really ran, across processes that were SIGKILLed.

The ``invariants`` job also writes an *effect log* (``$JETLANE_TEST_EFFECT_LOG``,
JSON lines): a ``begin`` record when a step function starts (run, step, the
attempt the engine is running, the ``ctx.uuid()`` value the handler passed in,
pid, wall time) and an ``end`` record when it returns or raises. ``begin`` is
written first thing, so an execution SIGKILLed mid-step still leaves its
evidence; ``tests/chaos/checker.py`` compares the log with the journal.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from jetlane import ChildFailed, ChildTimeout, Context, EventTimeout, RetryPolicy, job, step
from jetlane import wire as h

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


# -- the invariants job: steps that log their effects -------------------------

EFFECT_LOG = "JETLANE_TEST_EFFECT_LOG"
INV_RETRY = RetryPolicy(limit=4, delay=0.6, backoff="constant")


def effect(record: dict[str, Any]) -> None:
    """Append one JSON line to the effect log (one ``write`` with O_APPEND: lines from
    several processes never interleave)."""
    path = os.environ.get(EFFECT_LOG)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, msgspec.json.encode(record) + b"\n")
    finally:
        os.close(fd)


def engine_attempt(ctx: Context) -> int | None:
    """The attempt the engine is running, from its in-memory view of the journal.

    Not public API: read defensively, so that a refactored engine only costs the
    checker its attempt-level evidence (it falls back to wall-time checks).
    """
    replay = getattr(ctx, "_replay", None)
    last_outcome = getattr(replay, "_last_outcome", None)
    current = ctx.step_key.partition("/")[2] or None  # this step, even among parallel ones
    if last_outcome is None or current is None:
        return None
    try:
        last = last_outcome(current)
    except Exception:
        return None
    if last is None:
        return 1
    if isinstance(last, h.StepFailed):
        return last.attempt + 1
    return None  # executing a step with a recorded result: no attempt makes sense


def _begin(ctx: Context, value: str) -> str:
    run_id, _, step_id = ctx.step_key.partition("/")
    exec_id = uuid.uuid4().hex
    effect(
        {
            "ev": "begin",
            "id": exec_id,
            "run": run_id,
            "step": step_id,
            "attempt": engine_attempt(ctx),
            "value": value,
            "pid": os.getpid(),
            "t": time.time(),
        }
    )
    return exec_id


def _end(exec_id: str, ok: bool) -> None:
    effect({"ev": "end", "id": exec_id, "ok": ok, "t": time.time()})


def _sync_step(ctx: Context, value: str, delay: float, flaky: bool) -> Callable[[], str]:
    def work() -> str:
        exec_id = _begin(ctx, value)
        ok = False
        try:
            if flaky and _first_time(ctx):
                raise RuntimeError("flaky step fails its first execution")
            time.sleep(delay)  # blocking on purpose: a sync step
            ok = True
            return value
        finally:
            _end(exec_id, ok)

    return work


def _async_step(
    ctx: Context, value: str, delay: float, flaky: bool
) -> Callable[[], Awaitable[str]]:
    async def work() -> str:
        exec_id = _begin(ctx, value)
        ok = False
        try:
            if flaky and _first_time(ctx):
                raise RuntimeError("flaky step fails its first execution")
            await asyncio.sleep(delay)
            ok = True
            return value
        finally:
            _end(exec_id, ok)

    return work


def inv_budget(input: dict[str, Any]) -> int:
    """An upper bound on the journal entries of one ``invariants`` run, retries included."""
    per_step = 1 + (INV_RETRY.limit + 1) + INV_RETRY.limit  # values, outcomes, retry timers
    child = 4 if input.get("child") else 0  # values, child_started, timer_set, child_result
    return per_step * int(input["steps"]) + 2 + 2 * 3 + 1 + child  # nap, two waits, the end


def child_budget(input: dict[str, Any]) -> int:
    """An upper bound on the journal entries of one ``inv-child`` run."""
    per_step = (INV_RETRY.limit + 1) + INV_RETRY.limit  # outcomes, retry timers
    return per_step * len(input["values"]) + 1


@job("invariants")
async def invariants(ctx: Context, input: dict[str, Any]) -> dict[str, Any]:
    """``steps`` steps of ``delay`` s (sync or async, some flaky), a nap, then two waits;
    the first ``parallel`` steps run at once (``asyncio.gather``).

    Before each step the handler takes ``ctx.uuid()`` and passes it in: the step
    logs it and returns it, so the checker can compare what every execution saw
    with what the journal recorded. ``go`` must come; ``maybe`` may time out.
    """
    sync = set(input.get("sync", []))
    flaky = set(input.get("flaky", []))
    delay = float(input["delay"])
    seen: list[str] = []
    child: dict[str, Any] | None = None
    fanned = int(input.get("parallel", 0))
    if fanned:
        values = [str(ctx.uuid()) for _ in range(fanned)]  # taken before the branches
        make_step: list[Callable[..., Any]] = [
            _sync_step if i in sync else _async_step for i in range(fanned)
        ]
        seen.extend(
            await asyncio.gather(
                *(
                    step.do(
                        f"s{i}", make_step[i](ctx, values[i], delay, i in flaky), retries=INV_RETRY
                    )
                    for i in range(fanned)
                )
            )
        )
    for i in range(fanned, int(input["steps"])):
        if i == input.get("nap_at"):
            await step.sleep("nap", float(input["nap"]))
        value = str(ctx.uuid())
        make = _sync_step if i in sync else _async_step
        seen.append(await step.do(f"s{i}", make(ctx, value, delay, i in flaky), retries=INV_RETRY))
        if i == input.get("child", {}).get("at"):
            child = await _child(ctx, input["child"], delay)
    if input.get("child") and input["child"].get("at") is None:
        child = await _child(ctx, input["child"], delay)
    go = await step.wait_for_event("go", type="go", timeout="10m")
    try:
        maybe = await step.wait_for_event(
            "maybe", type="maybe", timeout=float(input["maybe_timeout"])
        )
    except EventTimeout:
        maybe = None
    out: dict[str, Any] = {"values": seen, "events": {"go": go, "maybe": maybe}}
    if child is not None:
        out["child"] = child
    return out


async def _child(ctx: Context, child: dict[str, Any], delay: float) -> dict[str, Any]:
    """Start an ``inv-child`` run, invoked (its end awaited) or detached (``start_run``).

    The child's steps get values the parent took (``ctx.uuid()``, recorded in the
    parent's journal) through the child's input. What the parent learnt goes into
    its output, for the checker to compare with the child's own terminal entry."""
    values = [str(ctx.uuid()) for _ in range(int(child["steps"]))]
    child_input = {
        "values": values,
        "delay": delay,
        "sync": child.get("sync", []),
        "flaky": child.get("flaky", []),
    }
    if child.get("detached"):
        run_id = await step.start_run("child", job="inv-child", input=child_input)
        return {"run_id": run_id, "detached": True}
    try:
        output = await step.invoke(
            "child", job="inv-child", input=child_input, timeout=child.get("timeout")
        )
    except ChildTimeout:
        return {"status": "timed_out"}
    except ChildFailed as exc:
        return {"status": exc.status}
    return {"status": "completed", "output": output}


@job("inv-child")
async def inv_child(ctx: Context, input: dict[str, Any]) -> dict[str, Any]:
    """A child of ``invariants``: one step per value its parent passed in, logging
    effects like the parent's steps (``c0``, ``c1``)."""
    sync = set(input.get("sync", []))
    flaky = set(input.get("flaky", []))
    delay = float(input["delay"])
    seen = []
    for i, value in enumerate(input["values"]):
        make = _sync_step if i in sync else _async_step
        seen.append(await step.do(f"c{i}", make(ctx, value, delay, i in flaky), retries=INV_RETRY))
    return {"values": seen}
