"""Rolling upgrades with parked runs: runner processes of two code versions overlap.

``tests.procs.upgrade_jobs`` is the job in two versions, picked per process by
$JETLANE_TEST_VARIANT. Each test starts a run on build A, lets it park on
``wait_for_event``, drains runner A (SIGTERM) and sends the event while only a
runner of the other version is up: what happens next is what docs/deploy.md
("Rolling upgrades") says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jetlane import Client, Log, Names, wire
from jetlane.embedded import EmbeddedNats

from .helpers import eventually
from .processes import RunnerProcess, executions
from .test_cli import jetlane

pytestmark = pytest.mark.slow

Spawn = Callable[..., RunnerProcess]
JOB = "upgrade"


class UpgradeRunner(RunnerProcess):
    jobs = "tests.procs.upgrade_jobs"


@pytest.fixture
def exec_log(tmp_path: Path) -> Path:
    return tmp_path / "executions.txt"


@pytest.fixture
def spawn(nats_server: EmbeddedNats, names: Names, exec_log: Path) -> Iterator[Spawn]:
    """``spawn(variant, build=None, adopt=False)``: a runner process of that code."""
    procs: list[RunnerProcess] = []

    def start(variant: str, build: str | None = None, adopt: bool = False) -> RunnerProcess:
        flags: dict[str, float | str] = {"drain_timeout": 5}
        if build is not None:
            flags["build_id"] = build
        if adopt:
            flags["adopt_orphans"] = 1
        proc = UpgradeRunner(
            nats_server.url,
            names,
            exec_log,
            tag=f"{variant}-{len(procs)}",
            flags=flags,
            env={"JETLANE_TEST_VARIANT": variant},
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


async def parked_on_a(client: Client, spawn: Spawn, run_id: str, build: str | None) -> None:
    """Start ``run_id`` on a runner of variant a (the only one up); wait until it waits."""
    first = spawn("a", build)
    await client.start(JOB, {}, run_id=run_id)

    async def waiting() -> bool:
        return (await client.status(run_id)).status == "waiting"

    await eventually(waiting, timeout=30, what="the run to wait for its event")
    first.terminate()  # a drain: it parks or hands back what it holds, then exits
    assert first.wait(20) == 0


async def kinds(client: Client, run_id: str) -> list[str]:
    return [m.kind async for m in client.history(run_id)]


async def waits_for(client: Client, run_id: str, why: str) -> None:
    async def marked() -> bool:
        return (run_id, JOB, why) in await client.waiting_runs()

    await eventually(marked, timeout=30, what=f"{run_id} marked waiting ({why})")


async def test_a_run_pinned_to_a_drained_build_waits_visibly_until_that_build_returns(
    client: Client, spawn: Spawn, exec_log: Path
) -> None:
    await parked_on_a(client, spawn, "u1", build="A")
    assert (await kinds(client, "u1"))[:2] == ["start", "run_started"]
    spawn("b", "B")
    await client.send_event("u1", "go", "now")
    await waits_for(client, "u1", "build:A")
    status = await client.status("u1")
    assert status.build == "A" and status.status == "waiting"
    assert status.detail is not None and "build 'A'" in status.detail
    listed, _ = await client.list_runs(build="A")
    assert [r.run_id for r in listed] == ["u1"]
    # Build B replayed nothing and ran nothing: the history ends at the event.
    assert (await kinds(client, "u1"))[-1] == "event"
    assert not [e for e in executions(exec_log) if e.startswith("b:")]

    spawn("a", "A")  # build A comes back: its start-up scan finds the run
    assert await client.result("u1", timeout=30) == "now finished by a"
    assert executions(exec_log) == ["a:u1/first", "a:u1/second"]

    async def unmarked() -> bool:
        return all(r != "u1" for r, _, _ in await client.waiting_runs())

    await eventually(unmarked, timeout=10, what="the waiting mark to be cleared")


async def test_an_operator_re_pins_a_drained_builds_run_and_the_new_build_finishes_it(
    client: Client, log: Log, spawn: Spawn, exec_log: Path, nats_server: EmbeddedNats, names: Names
) -> None:
    """The operator's view, through the CLI: what waits, for which build; the re-pin."""
    await parked_on_a(client, spawn, "u2", build="A")
    spawn("b", "B")
    await client.send_event("u2", "go", "later")
    await waits_for(client, "u2", "build:A")
    conn = ["--nats", nats_server.url, "--prefix", names.prefix, "--stream", names.stream]
    text = {"JETLANE_OUTPUT": "text"}
    waiting = await jetlane("runs", "waiting", *conn, env=text)
    assert waiting.code == 0, waiting.err
    assert ["u2", JOB, "a", "runner", "of", "build", "A"] in [
        line.split() for line in waiting.out.splitlines()
    ]
    listed = await jetlane("runs", "list", "--build", "A", *conn, env=text)
    header, row = listed.out.splitlines()
    assert header.split()[-1] == "BUILD" and row.split()[0] == "u2" and row.split()[-1] == "A"
    pinned = await jetlane(
        "runs",
        "pin",
        "--from-build",
        "A",
        "--build",
        "B",
        "--reason",
        "build A drained",
        "--json",
        *conn,
    )
    assert pinned.code == 0 and pinned.json_lines() == [{"run_id": "u2", "build": "B"}]
    assert await client.result("u2", timeout=30) == "later finished by b"
    history = await log.read("u2")
    pins = [m.body for m in history if m.kind == "pin"]
    assert pins == [wire.Pin(build="B", reason="build A drained")]
    assert executions(exec_log) == ["a:u2/first", "b:u2/second"]
    assert (await client.status("u2")).build == "B"


async def test_a_new_build_with_adopt_orphans_takes_over_a_drained_builds_run(
    client: Client, log: Log, spawn: Spawn, exec_log: Path
) -> None:
    await parked_on_a(client, spawn, "u3", build="A")
    spawn("b", "B", adopt=True)
    await client.send_event("u3", "go", "soon")
    assert await client.result("u3", timeout=30) == "soon finished by b"
    (pin,) = [m.body for m in await log.read("u3") if m.kind == "pin"]
    assert pin.build == "B" and pin.reason is not None and "no live runner of build A" in pin.reason
    assert executions(exec_log) == ["a:u3/first", "b:u3/second"]


async def test_a_re_pin_to_incompatible_code_blocks_visibly_and_a_re_pin_back_finishes(
    client: Client, spawn: Spawn, exec_log: Path
) -> None:
    await parked_on_a(client, spawn, "u4", build="A")
    spawn("b-diverged", "B")
    await client.send_event("u4", "go", "x")
    await waits_for(client, "u4", "build:A")
    assert await client.pin("u4", "B", reason="try the new code")

    async def blocked() -> bool:
        listed, _ = await client.list_runs(status="blocked")
        return [r.run_id for r in listed] == ["u4"]

    await eventually(blocked, timeout=30, what="u4 listed as blocked")
    status = await client.status("u4")
    assert status.error is not None and status.error.type == "NonDeterminismError"
    assert not [e for e in executions(exec_log) if e.startswith("b-diverged:")]

    assert await client.pin("u4", "A", reason="roll back")
    spawn("a", "A")
    assert await client.result("u4", timeout=30) == "x finished by a"
    assert executions(exec_log) == ["a:u4/first", "a:u4/second"]


async def test_without_build_ids_a_run_blocked_by_new_code_resumes_on_the_old_code(
    client: Client, spawn: Spawn, exec_log: Path
) -> None:
    """Today's behaviour, documented honestly: no pin, so whichever code replays the
    run decides. New code that does not fit blocks it (visibly); old code that comes
    back (a rollback, or an old runner still up) resumes it from where it was."""
    await parked_on_a(client, spawn, "u5", build=None)
    new = spawn("b-diverged")
    await client.send_event("u5", "go", "y")
    await waits_for(client, "u5", "blocked")
    listed, _ = await client.list_runs(status="blocked")
    assert [r.run_id for r in listed] == ["u5"]
    assert (await kinds(client, "u5"))[-1] == "run_blocked"
    new.terminate()
    assert new.wait(20) == 0
    spawn("a")  # the old code again: its start-up scan finds the blocked run
    assert await client.result("u5", timeout=30) == "y finished by a"
    kinds_ = await kinds(client, "u5")
    assert "run_started" not in kinds_
    after = kinds_[kinds_.index("run_blocked") + 1 :]
    assert after == ["event_received", "step_completed", "run_completed"]
    assert executions(exec_log) == ["a:u5/first", "a:u5/second"]
