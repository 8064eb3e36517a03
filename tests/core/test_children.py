"""Child runs (step.invoke, step.start_run) in the pure core and the test kit."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from jetlane import ChildFailed, ChildTimeout, Context, Failure, RunFailedError, step
from jetlane import wire as h
from jetlane._core.children import child_id
from jetlane._core.replay import Finished, Park
from jetlane._core.status import summarize
from jetlane.testing import Environment

from .replay_driver import Driver, job_of, of, plain, replay_fresh


async def double(ctx: Context, n: int) -> int:
    return await step.do("double", lambda: n * 2)


async def slow_double(ctx: Context, n: int) -> int:
    await step.sleep("nap", "1h")
    return n * 2


async def boom(ctx: Context, n: int) -> int:
    raise Failure(f"no {n}")


async def waits(ctx: Context) -> Any:
    return await step.wait_for_event("go", type="go", timeout="30d")


async def parent(ctx: Context, n: int) -> dict[str, Any]:
    first = await step.invoke("child", job="double", input=n)
    try:
        await step.invoke("bad", job="boom", input=n)
    except ChildFailed as exc:
        failed = [exc.run_id, exc.status, exc.type, exc.message]
    return {"first": first, "failed": failed}


async def impatient(ctx: Context) -> str:
    try:
        await step.invoke("child", job="waits", timeout="1m")
    except ChildTimeout as exc:
        return f"gave up on {exc.run_id}"
    return "never"


async def fan_out(ctx: Context, n: int) -> list[str]:
    return [await step.start_run(f"kid:{i}", job="slow-double", input=i) for i in range(n)]


async def patient(ctx: Context) -> Any:
    return await step.invoke("child", job="waits", run_id="the-child")


JOBS = [
    job_of(double, name="double"),
    job_of(slow_double, name="slow-double"),
    job_of(boom, name="boom"),
    job_of(waits, name="waits"),
    job_of(parent, name="parent"),
    job_of(impatient, name="impatient"),
    job_of(fan_out, name="fan-out"),
    job_of(patient, name="patient"),
]


def test_child_ids_are_deterministic_valid_and_distinct() -> None:
    a = child_id("order-1", "charge: card #2")
    assert a == child_id("order-1", "charge: card #2")
    assert h.RUN_ID.fullmatch(a) and a.startswith("order-1-")
    assert a != child_id("order-1", "charge: card #3") != child_id("order-2", "charge: card #2")
    long = "x" * 128
    assert h.RUN_ID.fullmatch(child_id(long, "s"))
    assert child_id(long, "s") != child_id(long, "t")
    assert h.RUN_ID.fullmatch(child_id(child_id(long, "s"), "s"))


async def test_invoke_returns_the_child_output_and_a_failed_child_raises() -> None:
    async with Environment(JOBS) as env:
        run = await env.start("parent", 21, run_id="p1")
        out = await run.result()
        bad = child_id("p1", "bad")
        assert out["first"] == 42
        assert out["failed"][:3] == [bad, "failed", "Failure"]
        assert "no 21" in out["failed"][3]
        # The children record their parent; the parent lists its children.
        kid = await env.status(child_id("p1", "child"))
        assert kid.parent == h.Parent(run_id="p1", step="child") and kid.output == 42
        status = await run.status()
        assert [(c.step, c.job, c.status) for c in status.children] == [
            ("child", "double", "completed"),
            ("bad", "boom", "failed"),
        ]
        kinds = [m.kind for m in await env.history("p1")]
        assert kinds.count("child_started") == 2 and kinds.count("child_ended") == 2
        assert kinds.count("child_result") == 2


async def test_an_uncaught_child_failure_fails_the_parent_deliberately() -> None:
    async def strict(ctx: Context) -> Any:
        return await step.invoke("bad", job="boom", input=1)

    async with Environment([*JOBS, job_of(strict, name="strict")]) as env:
        run = await env.start("strict", run_id="s1")
        with pytest.raises(RunFailedError) as failed:
            await run.result()
        assert failed.value.status == "failed" and failed.value.type == "ChildFailed"


async def test_a_parent_waits_for_a_child_that_sleeps() -> None:
    async def sleeper_parent(ctx: Context) -> Any:
        return await step.invoke("kid", job="slow-double", input=5)

    async with Environment([*JOBS, job_of(sleeper_parent, name="sp")]) as env:
        run = await env.start("sp", run_id="sp1")
        status = await run.status()
        assert status.status == "waiting" and status.waiting_for == f"run {child_id('sp1', 'kid')}"
        assert await run.result() == 10


async def test_invoke_timeout_raises_and_cancels_the_child() -> None:
    async with Environment(JOBS) as env:
        run = await env.start("impatient", run_id="i1")
        kid = child_id("i1", "child")
        assert await run.result() == f"gave up on {kid}"
        assert (await env.status(kid)).status == "cancelled"
        assert [c.status for c in (await run.status()).children] == ["timed_out"]
        # The cancelled child still reports its end; the ended parent ignores it.
        kinds = [m.kind for m in await env.history("i1")]
        assert kinds[-1] == "child_ended" and kinds.index("run_completed") < len(kinds) - 1
        assert (await run.status()).status == "completed"


async def test_cancelling_a_parent_cancels_the_child_it_waits_on() -> None:
    async with Environment(JOBS) as env:
        run = await env.start("patient", run_id="c1")
        assert (await env.status("the-child")).status == "waiting"
        assert await env.cancel("c1", "stop")
        assert (await run.status()).status == "cancelled"
        child = await env.status("the-child")
        assert child.status == "cancelled" and child.error is not None
        assert "parent run c1 ended" in child.error.message


async def test_start_run_children_are_detached() -> None:
    async with Environment(JOBS) as env:
        run = await env.start("fan-out", 3, run_id="f1")
        ids = await run.result()
        assert ids == [child_id("f1", f"kid:{i}") for i in range(3)]
        status = await run.status()
        assert [c.status for c in status.children] == ["detached"] * 3
        for i, kid in enumerate(ids):
            assert await env.result(kid) == 2 * i
            assert (await env.status(kid)).parent == h.Parent("f1", f"kid:{i}", detached=True)
        # Detached children tell no one: no child_ended reached the (ended) parent.
        assert all(m.kind != "child_ended" for m in await env.history("f1"))


async def test_a_taken_run_id_raises_child_failed_rejected() -> None:
    async def taker(ctx: Context) -> str:
        try:
            await step.invoke("child", job="double", input=1, run_id="taken")
        except ChildFailed as exc:
            return f"{exc.status}:{exc.type}"
        return "started"

    async with Environment([*JOBS, job_of(taker, name="taker")]) as env:
        await env.start("double", 1, run_id="taken")
        run = await env.start("taker", run_id="t1")
        assert await run.result() == "rejected:RunAlreadyExists"
        assert [c.status for c in (await run.status()).children] == ["rejected"]


async def test_bad_invoke_arguments_raise_before_the_atom_counts() -> None:
    async def bad(ctx: Context) -> str:
        calls: list[dict[str, Any]] = [
            {"job": "no such/job"},
            {"job": "double", "run_id": "not a valid id"},
            {"job": "double", "input": object()},
        ]
        for kwargs in calls:
            try:
                await step.invoke("a", **kwargs)
            except ValueError:
                continue
            return "accepted"
        return await step.do("after", lambda: "ok")

    async with Environment([job_of(bad, name="bad")]) as env:
        run = await env.start("bad", run_id="b1")
        assert await run.result() == "ok"


# -- the pure core, step by step (the in-memory driver) -------------------------


async def test_child_start_is_stored_before_child_started_and_a_crash_reuses_the_id() -> None:
    driver = Driver(job_of(patient, name="patient"))
    # The runner dies after storing the child's start, before child_started.
    driver.feed()
    await driver.replay.next(None)
    driver.flush(limit=0)
    assert list(driver.children) == ["the-child"] and not of(driver, h.ChildStarted)
    await driver.crash()
    decision = await driver.advance()
    assert isinstance(decision, Park)
    (started,) = of(driver, h.ChildStarted)
    assert started.run_id == "the-child" and started.job == "waits"
    assert driver.children["the-child"].parent == h.Parent(run_id="r1", step="child")
    driver.child_ends("the-child", {"ok": 1})
    decision = await driver.advance()
    assert isinstance(decision, Finished)
    assert plain(decision.entry.output) == {"ok": 1}  # type: ignore[union-attr]
    await driver.close()


class EarlyChild(Driver):
    """The child run ends before the parent has even written child_started."""

    async def create_once(self, run_id: str, body: h.Start) -> h.Start | None:
        found = await super().create_once(run_id, body)
        self.child_ends(run_id, "fast")
        return found


async def test_a_child_that_ends_before_the_parent_parks() -> None:
    driver = EarlyChild(job_of(patient, name="patient"))
    decision = await driver.advance()
    assert isinstance(decision, Finished)
    assert plain(decision.entry.output) == "fast"  # type: ignore[union-attr]
    assert driver.kinds == ["child_started", "child_result", "run_completed"]
    (result,) = of(driver, h.ChildResult)
    assert result.status == "completed" and driver.log[result.input_seq - 1].kind == "child_ended"
    await driver.close()


async def test_a_childs_end_stored_while_the_timeout_is_written_wins() -> None:
    driver = Driver(job_of(impatient, name="impatient"))
    assert isinstance(await driver.advance(), Park)
    kid = of(driver, h.ChildStarted)[0].run_id
    driver.clock.advance(120)
    driver.fire_due()
    real_append = driver.append

    async def racing(run_id: str, body: h.Journal, expected: int) -> int:
        if isinstance(body, h.ChildTimedOut) and not driver.replay.recorded.child_ends:
            driver.child_ends(kid, "just in time")  # lands first: the fence refuses
        return await real_append(run_id, body, expected)

    driver.append = racing  # type: ignore[method-assign]
    from jetlane._drive import Outdated

    with pytest.raises(Outdated):
        await driver.advance()
    await driver.crash()  # the runner replays from the log, which now has the end
    driver.append = real_append  # type: ignore[method-assign]
    decision = await driver.advance()
    assert isinstance(decision, Finished)
    assert plain(decision.entry.output) == "never"  # type: ignore[union-attr]
    assert not of(driver, h.ChildTimedOut) and not driver.sent
    await driver.close()


async def test_an_ended_child_found_by_a_replay_tells_its_parent_again() -> None:
    driver = Driver(job_of(double, name="double"), 4, start=False)
    driver.publish(h.Start(job="double", input=4, parent=h.Parent(run_id="p", step="s")))
    decision = await driver.advance()
    assert isinstance(decision, Finished)
    assert driver.sent == [("p", h.ChildEnded(run_id="r1", status="completed", output=8))]
    driver.sent.clear()
    driver._msg_ids.clear()  # past the duplicate window
    await driver.crash()
    assert isinstance(await driver.advance(), Finished)
    assert driver.sent == [("p", h.ChildEnded(run_id="r1", status="completed", output=8))]
    await driver.close()


async def test_a_cancelled_parent_cancels_its_child_again_when_replayed() -> None:
    driver = Driver(job_of(patient, name="patient"))
    await driver.advance()
    driver.cancel("enough")
    assert isinstance(await driver.advance(), Finished)
    cancels = [(run, body) for run, body in driver.sent if isinstance(body, h.Cancel)]
    assert [run for run, _ in cancels] == ["the-child"]
    driver.sent.clear()
    driver._msg_ids.clear()
    await driver.crash()
    assert isinstance(await driver.advance(), Finished)
    assert [run for run, body in driver.sent if isinstance(body, h.Cancel)] == ["the-child"]
    # Once the child's end is in the parent's inbox, nothing is sent any more.
    driver.child_ends("the-child", status="cancelled")
    driver.sent.clear()
    driver._msg_ids.clear()
    await driver.crash()
    assert isinstance(await driver.advance(), Finished) and driver.sent == []
    await driver.close()


async def test_changing_the_child_job_under_a_running_parent_blocks_it() -> None:
    driver = Driver(job_of(patient, name="patient"))
    await driver.advance()

    async def other(ctx: Context) -> Any:
        return await step.invoke("child", job="double", run_id="the-child")

    driver.job = job_of(other, name="patient")
    await driver.crash()
    decision = await driver.advance()
    assert decision.__class__.__name__ == "Blocked"
    assert "job 'waits'" in decision.error.message  # type: ignore[union-attr]
    await driver.close()


async def test_replaying_any_prefix_gives_the_live_decisions() -> None:
    driver = Driver(job_of(parent, name="parent"), 3)
    await driver.advance()
    driver.child_ends(child_id("r1", "child"), 6)
    await driver.advance()
    driver.child_ends(child_id("r1", "bad"), status="failed")
    final = await driver.advance()
    assert isinstance(final, Finished)
    decision, appends = await replay_fresh(driver)
    assert isinstance(decision, Finished) and appends == []
    assert summarize("r1", driver.log).status == "completed"  # type: ignore[union-attr]
    assert msgspec.json.decode(h.encode(driver.journal[-1]))["output"]["first"] == 6
    await driver.close()


async def test_jetlane_status_shows_parent_and_children() -> None:
    import io

    from jetlane.cli.render import Printer

    async with Environment(JOBS) as env:
        await env.start("patient", run_id="w1")
        out = io.StringIO()
        Printer(json_lines=False, out=out).status(await env.status("w1"))
        Printer(json_lines=False, out=out).status(await env.status("the-child"))
        text = out.getvalue()
        assert "waiting for child run the-child" in text
        assert "child    the-child (waits, step child): running" in text
        assert "parent   w1 (step child)" in text
        out = io.StringIO()
        Printer(json_lines=True, out=out).status(await env.status("w1"))
        shown = msgspec.json.decode(out.getvalue())
        assert shown["children"] == [
            {"run_id": "the-child", "step": "child", "job": "waits", "status": "running"}
        ]


def test_bad_child_kinds_do_not_decode() -> None:
    from jetlane import DecodeError

    for kind, data in (
        ("start", b'{"job": "x", "parent": {"run_id": "a.b", "step": "s"}}'),
        ("child_ended", b'{"run_id": "kid", "status": "exploded"}'),
        ("child_ended", b'{"run_id": "no spaces", "status": "completed"}'),
        ("child_ended", b'{"status": "completed"}'),
    ):
        with pytest.raises(DecodeError):
            h.decode(kind, data, direction="in")
    body = h.decode("start", b'{"job": "x", "parent": {"run_id": "p", "step": "a b#2"}}')
    assert body == h.Start(job="x", parent=h.Parent(run_id="p", step="a b#2"))
    # A start with no parent encodes as before (no new key).
    assert msgspec.json.decode(h.encode(h.Start(job="x", input=1))) == {"job": "x", "input": 1}
