"""summarize(): a run's status read off its history, for every status."""

from __future__ import annotations

import typing
from typing import Any

import pytest

from jetlane import wire as h
from jetlane._core.status import RunStatus, Status, summarize

ERR = h.ErrorInfo("RuntimeError", "boom")


def history(*bodies: h.Body, before: tuple[h.Body, ...] = ()) -> list[h.Message]:
    msgs = []
    for seq, body in enumerate((*before, h.Start(job="deploy"), *bodies), start=1):
        kind = h.kind_of(body)
        direction = "in" if kind in h.INPUT_KINDS else "out"
        msgs.append(h.Message(seq, "r1", direction, kind, body, time=f"t{seq}"))
    return msgs


def status(*bodies: h.Body) -> RunStatus:
    got = summarize("r1", history(*bodies))
    assert got is not None
    return got


def test_no_start_means_no_run() -> None:
    assert summarize("r1", []) is None
    assert summarize("r1", history()[1:]) is None


def test_queued_until_the_first_journal_entry() -> None:
    s = status(h.Event(type="early"))
    assert (s.status, s.job, s.created_at, s.updated_at) == ("queued", "deploy", "t1", "t2")
    assert s.history_length == 2 and not s.done


def test_running_after_a_step_and_attempts_belong_to_their_step() -> None:
    s = status(
        h.StepFailed("a", 1, ERR, "2025-01-01T00:00:10.000Z"),
        h.TimerSet("a", "retry-1-x", "2025-01-01T00:00:10.000Z", "retry"),
        h.StepCompleted("a", 2, 1, "2025-01-01T00:00:10.000Z", 3.0),
    )
    assert (s.status, s.step, s.attempt, s.error, s.waiting_for) == ("running", "a", 2, None, None)
    s = status(h.StepCompleted("a", 2, 1, "", 1.0), h.SleepCompleted("nap", None))
    assert (s.status, s.step, s.attempt) == ("running", "nap", None)


def test_sleeping_on_a_sleep_timer() -> None:
    s = status(
        h.StepCompleted("a", 3, 1, "", 1.0),
        h.ValuesRecorded([1]),
        h.TimerSet("nap", "sleep-1-x", "2025-01-01T01:00:00.000Z", "sleep"),
    )
    assert (s.status, s.step, s.waiting_for, s.until) == (
        "sleeping",
        "nap",
        "timer",
        "2025-01-01T01:00:00.000Z",
    )
    assert s.attempt is None


def test_waiting_for_an_event_then_running_when_it_came() -> None:
    started = h.WaitStarted("approval", "approve", "2025-01-02T00:00:00.000Z")
    timer = h.TimerSet("approval", "wait_timeout-1-x", started.timeout_at, "wait_timeout")
    s = status(started, timer)
    assert (s.status, s.step, s.waiting_for, s.until) == (
        "waiting",
        "approval",
        "approve",
        started.timeout_at,
    )
    s = status(started, timer, h.Event("approve"), h.EventReceived("approval", "approve", 4))
    assert (s.status, s.waiting_for, s.until) == ("running", None, None)


def test_retrying_after_a_failed_attempt_with_one_left() -> None:
    s = status(
        h.StepFailed("a", 2, ERR, "2025-01-01T00:00:30.000Z"),
        h.TimerSet("a", "retry-2-x", "2025-01-01T00:00:30.000Z", "retry"),
    )
    assert (s.status, s.step, s.attempt, s.error, s.until) == (
        "retrying",
        "a",
        2,
        ERR,
        "2025-01-01T00:00:30.000Z",
    )
    s = status(h.StepFailed("a", 6, ERR, None))
    assert (s.status, s.error) == ("running", ERR)


@pytest.mark.parametrize(
    ("end", "expected"),
    [
        (h.RunCompleted({"ok": True}), ("completed", {"ok": True}, None)),
        (h.RunFailed(ERR), ("failed", None, ERR)),
        (h.RunCancelled("stop", 5), ("cancelled", None, h.ErrorInfo("Cancelled", "stop"))),
        (h.RunCancelled(None, 5), ("cancelled", None, h.ErrorInfo("Cancelled", "cancelled"))),
    ],
)
def test_terminal_statuses_stick(end: h.Journal, expected: tuple[str, Any, Any]) -> None:
    later = (h.StepCompleted("zombie", 1, 1, "", 1.0), h.RunFailed(h.ErrorInfo("X", "late")))
    s = status(h.StepCompleted("a", 1, 1, "", 1.0), end, *later)
    assert (s.status, s.output, s.error) == expected
    assert s.done and s.step == "a" and s.history_length == 5 and s.updated_at == "t5"


def test_blocked_then_resumed_by_compatible_code() -> None:
    info = h.ErrorInfo("NonDeterminismError", "step #2 ...")
    s = status(h.StepCompleted("a", 1, 1, "", 1.0), h.RunBlocked("b", info))
    assert (s.status, s.step, s.error, s.done) == ("blocked", "b", info, False)
    s = status(
        h.StepCompleted("a", 1, 1, "", 1.0),
        h.RunBlocked("b", info),
        h.StepCompleted("b", 1, 1, "", 1.0),
    )
    assert (s.status, s.error) == ("running", None)


def test_inputs_before_the_start_and_after_it_are_counted_not_applied() -> None:
    msgs = history(h.Cancel("pending"), before=(h.Event("stray"),))
    s = summarize("r1", msgs)
    assert s is not None and s.status == "queued" and s.created_at == "t2"
    assert s.history_length == 3 and s.updated_at == "t3"


def test_every_status_is_reachable() -> None:
    seen = {
        status().status,
        status(h.StepCompleted("a", 1, 1, "", 1.0)).status,
        status(h.TimerSet("n", "t", "x", "sleep")).status,
        status(h.WaitStarted("w", "e", "x")).status,
        status(h.StepFailed("a", 1, ERR, "x")).status,
        status(h.RunCompleted(None)).status,
        status(h.RunFailed(ERR)).status,
        status(h.RunCancelled()).status,
        status(h.RunBlocked("a", ERR)).status,
    }
    assert seen == set(typing.get_args(Status))


def test_status_shows_where_a_failed_run_raised() -> None:
    import io

    from jetlane._core.status import RunStatus
    from jetlane.cli.render import Printer

    frames = [h.Frame(file=f"/app/jobs/x{i}.py", line=i, function=f"f{i}") for i in range(12)]
    error = h.ErrorInfo(type="KeyError", message="'carrier'", traceback=frames)
    out = io.StringIO()
    Printer(json_lines=False, out=out).status(
        RunStatus(run_id="r", job="j", status="failed", error=error)
    )
    text = out.getvalue()
    assert "KeyError: 'carrier'" in text
    assert "at /app/jobs/x11.py:11 in f11" in text  # the innermost frame
    assert "x3.py" not in text  # only the innermost few
