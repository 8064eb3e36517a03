"""Child runs across real runner processes: a parent and its child served by different
runners, a child that ends before its parent waits, a cancel that reaches the child."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jetlane import Client, Log, Names
from jetlane import wire as h
from jetlane._core.children import child_id
from jetlane.embedded import EmbeddedNats

from .helpers import eventually
from .processes import RunnerProcess, executions

pytestmark = pytest.mark.slow

Spawn = Callable[[str], RunnerProcess]


@pytest.fixture
def exec_log(tmp_path: Path) -> Path:
    return tmp_path / "executions.txt"


@pytest.fixture
def spawn(nats_server: EmbeddedNats, names: Names, exec_log: Path) -> Iterator[Spawn]:
    """A runner process serving only the jobs named (comma-separated)."""
    procs: list[RunnerProcess] = []

    def start(serve: str) -> RunnerProcess:
        tag = f"{serve.replace(',', '+')}-{len(procs)}"
        proc = RunnerProcess(nats_server.url, names, exec_log, tag=tag, flags={"serve": serve})
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


async def test_parent_and_child_on_different_runners(
    client: Client, log: Log, spawn: Spawn, exec_log: Path
) -> None:
    spawn("order")
    spawn("charge-child")
    await client.start("order", {"cents": 500}, run_id="order-1")
    out = await client.result("order-1", timeout=30)
    kid = child_id("order-1", "charge")
    assert out == {"order": "order-1", "charged": {"receipt": "receipt-500"}}
    # Only the second runner serves the child's job: it ran the child's step.
    assert executions(exec_log) == [f"{kid}/charge-card"]
    child = await client.status(kid)
    assert child.status == "completed" and child.parent == h.Parent("order-1", "charge")
    parent = await client.status("order-1")
    assert [(c.run_id, c.status) for c in parent.children] == [(kid, "completed")]
    kinds = [m.kind async for m in client.history("order-1")]
    assert kinds == ["start", "child_started", "child_ended", "child_result", "run_completed"]


async def test_a_child_that_ends_before_its_parent_waits(
    client: Client, log: Log, spawn: Spawn, exec_log: Path
) -> None:
    # The crash window: a parent's runner stored the child's start and died before
    # recording child_started; the child ran to its end meanwhile. The parent, served
    # later, finds its child's start (create-once: the same id), records it, and takes
    # the end already in its inbox.
    start = h.Start(
        job="charge-child", input={"cents": 7}, parent=h.Parent(run_id="order-2", step="charge")
    )
    assert await log.create_once("kid-2", start) is None
    spawn("charge-child")
    await eventually(
        lambda: _has(log, "order-2", "child_ended"), timeout=30, what="the child's end"
    )
    assert (await client.status("kid-2")).status == "completed"
    await client.start("order", {"cents": 7, "child": "kid-2"}, run_id="order-2")
    spawn("order")
    out = await client.result("order-2", timeout=30)
    assert out == {"order": "order-2", "charged": {"receipt": "receipt-7"}}
    kinds = [m.kind async for m in client.history("order-2")]
    assert kinds == ["child_ended", "start", "child_started", "child_result", "run_completed"]
    assert executions(exec_log) == ["kid-2/charge-card"]  # the child ran once


async def test_cancelling_a_waiting_parent_cancels_its_child(
    client: Client, log: Log, spawn: Spawn
) -> None:
    spawn("waiting-parent")
    spawn("waiting-child")
    await client.start("waiting-parent", run_id="wp-1")
    kid = child_id("wp-1", "child")

    async def child_waits() -> bool:
        try:
            return (await client.status(kid)).status == "waiting"
        except LookupError:
            return False

    await eventually(child_waits, timeout=30, what="the child waiting for its event")
    assert (await client.status("wp-1")).waiting_for == f"run {kid}"
    assert await client.cancel("wp-1", "customer left")

    async def child_cancelled() -> bool:
        return (await client.status(kid)).status == "cancelled"

    await eventually(child_cancelled, timeout=30, what="the child cancelled")
    child = await client.status(kid)
    assert child.error is not None and "parent run wp-1 ended" in child.error.message
    assert (await client.status("wp-1")).status == "cancelled"
    # The child's end still reaches the ended parent, which ignores it.
    await eventually(lambda: _has(log, "wp-1", "child_ended"), timeout=30, what="child's end")
    assert (await client.status("wp-1")).status == "cancelled"


async def _has(log: Log, run_id: str, kind: str) -> bool:
    return any(m.kind == kind for m in await log.read(run_id))
