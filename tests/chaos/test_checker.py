"""The checker on small hand-written histories: each invariant holds on a good run and
fails, with its evidence, on a history that breaks it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from jetlane import Names
from jetlane import wire as h
from jetlane._core.durations import format_time

from .checker import (
    CANCEL_PAUSE,
    CHILDREN,
    INPUTS,
    INVARIANTS,
    JOURNAL,
    REEXECUTION,
    TIMERS,
    VALUES,
    Execution,
    Sent,
    Tally,
    Violation,
    check_append_only,
    check_dead_letters,
    check_run,
    parse_effects,
)

NAMES = Names("p", "P")
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
RUN = "r1"
NAP = "sleep-1-aaaa"
GO_TIMEOUT = "wait_timeout-1-bbbb"
RETRY = "retry-1-cccc"
U1, U2, U3 = (f"00000000-0000-4000-8000-00000000000{i}" for i in (1, 2, 3))


def at(seconds: float) -> str:
    return format_time(T0 + timedelta(seconds=seconds))


def wall(seconds: float) -> float:
    return (T0 + timedelta(seconds=seconds)).timestamp()


class History:
    """A history under construction: messages get increasing seqs and the given times."""

    def __init__(self, run_id: str = RUN) -> None:
        self.run_id = run_id
        self.messages: list[h.Message] = []
        self.fired: dict[int, str] = {}

    def add(self, direction: str, body: Any, t: float) -> int:
        seq = len(self.messages) + 1
        kind = "invalid" if isinstance(body, h.Invalid) else h.kind_of(body)
        self.messages.append(h.Message(seq, self.run_id, direction, kind, body, at(t)))
        return seq

    def inp(self, body: Any, t: float) -> int:
        return self.add("in", body, t)

    def out(self, body: Any, t: float) -> int:
        return self.add("out", body, t)

    def timer(self, token: str, step: str, purpose: str, t: float, *, fired: bool = True) -> int:
        seq = self.inp(h.Timer(token, step, purpose), t)
        if fired:
            self.fired[seq] = NAMES.timer(self.run_id, token)
        return seq


def ex(
    step: str, begin: float, *, attempt: int | None = 1, value: Any = None, run: str = RUN
) -> Execution:
    return Execution(run, step, attempt, value, 4242, wall(begin), wall(begin + 0.1))


def good() -> tuple[History, list[Execution], Sent]:
    """A run that keeps every promise: a step, a nap, an event, done."""
    run = History()
    start = run.inp(h.Start("invariants", {}), 0.0)
    run.out(h.ValuesRecorded([U1]), 0.2)
    run.out(h.StepCompleted("s0", 1, U1, at(0.05), 100.0), 0.2)
    run.out(h.TimerSet("nap", NAP, at(1.2), "sleep"), 0.21)
    fired = run.timer(NAP, "nap", "sleep", 1.25)
    run.out(h.SleepCompleted("nap", fired), 1.26)
    run.out(h.WaitStarted("go", "go", at(600)), 1.27)
    run.out(h.TimerSet("go", GO_TIMEOUT, at(600), "wait_timeout"), 1.27)
    event = run.inp(h.Event("go", {"add": 1}), 1.5)
    run.out(h.EventReceived("go", "go", event), 1.51)
    run.out(h.RunCompleted({"values": [U1], "events": {"go": {"add": 1}}}), 1.52)
    sent = Sent(RUN, starts=[start], events=[event], budget=20)
    return run, [ex("s0", 0.05, value=U1)], sent


def check(
    run: History,
    effects: list[Execution],
    sent: Sent | None = None,
    *,
    earlier: list[list[h.Message]] | None = None,
    settled: bool = True,
) -> list[Violation]:
    return check_run(
        run.messages,
        effects,
        run_id=RUN,
        names=NAMES,
        sent=sent,
        fired=run.fired,
        earlier=earlier or [],
        settled=settled,
    )


def only(found: list[Violation], invariant: str, *words: str) -> Violation:
    """The one violation found; it names ``invariant``, and its kind and evidence hold ``words``."""
    assert len(found) == 1, "\n".join(map(str, found))
    assert found[0].invariant == invariant, found[0]
    for word in words:
        assert word in str(found[0]), found[0]
    return found[0]


def test_a_good_run_keeps_every_invariant_and_every_invariant_was_checked() -> None:
    run, effects, sent = good()
    tally = Tally()
    found = check_run(
        run.messages,
        effects,
        run_id=RUN,
        names=NAMES,
        sent=sent,
        fired=run.fired,
        earlier=[run.messages[:3]],
        tally=tally,
    )
    assert found == []
    # the good run has no cancel, pause or child: I1 and I7 are exercised by their own tests
    assert set(tally.counts) == set(INVARIANTS) - {CANCEL_PAUSE, CHILDREN}


# -- I1 cancel/pause ---------------------------------------------------------------


def cancelled_run(*, steps_after: int) -> tuple[History, list[Execution]]:
    run = History()
    run.inp(h.Start("invariants", {}), 0.0)
    cancel = run.inp(h.Cancel("stop"), 0.1)
    effects = [ex("s0", 0.05, value=U1)]
    run.out(h.ValuesRecorded([U1]), 0.2)
    run.out(h.StepCompleted("s0", 1, U1, at(0.05), 100.0), 0.2)  # the one in flight
    for i in range(1, steps_after + 1):
        effects.append(ex(f"s{i}", 0.2 * i + 0.05))
        run.out(h.StepCompleted(f"s{i}", 1, None, at(0.2 * i + 0.05), 100.0), 0.2 * i + 0.2)
    run.out(h.RunCancelled("stop", cancel), 2.0)
    return run, effects


def test_cancel_with_the_step_in_flight_finishing_is_fine() -> None:
    run, effects = cancelled_run(steps_after=0)
    assert check(run, effects) == []


def test_steps_after_a_cancel_are_a_violation_in_journal_and_effects() -> None:
    run, effects = cancelled_run(steps_after=2)
    found = check(run, effects)
    assert [v.kind for v in found] == ["steps-after-cancel", "executions-after-cancel"]
    assert {v.invariant for v in found} == {CANCEL_PAUSE}
    assert "3 steps (3 outcomes) progressed after the cancel #2" in found[0].evidence
    assert "2 step executions began after the cancel" in found[1].evidence


def test_a_cancel_never_acted_on_is_a_violation() -> None:
    run = History()
    start = run.inp(h.Start("invariants", {}), 0.0)
    run.out(h.WaitStarted("go", "go", at(600)), 0.1)
    run.inp(h.Cancel(None), 0.5)
    only(check(run, [], Sent(RUN, starts=[start])), CANCEL_PAUSE, "cancel-ignored", "never acted")
    assert check(run, [], Sent(RUN, starts=[start]), settled=False) == []


def paused_fan_out(*, late: bool) -> tuple[History, list[Execution]]:
    """A run whose three first steps run in parallel; a pause lands as they start."""
    run = History()
    run.inp(h.Start("invariants", {"parallel": 3}), 0.0)
    run.out(h.ValuesRecorded([U1, U1, U1]), 0.05)
    pause = 0.1
    run.inp(h.Pause("hold"), pause)
    effects = [ex(f"s{i}", pause + 0.01 * i, value=U1) for i in range(3)]  # one burst
    for i in range(3):
        run.out(h.StepCompleted(f"s{i}", 1, U1, at(pause + 0.01 * i), 100.0), 0.3 + 0.01 * i)
    if late:  # a step that began well after the burst: started after the pause was known
        effects.append(ex("s3", 1.0, value=U1))
        run.out(h.StepCompleted("s3", 1, U1, at(1.0), 100.0), 1.1)
    return run, effects


def test_a_parallel_group_in_flight_at_a_pause_may_finish_but_nothing_after() -> None:
    run, effects = paused_fan_out(late=False)
    assert [v for v in check(run, effects, settled=False) if v.invariant == CANCEL_PAUSE] == []
    run, effects = paused_fan_out(late=True)
    found = [v for v in check(run, effects, settled=False) if v.invariant == CANCEL_PAUSE]
    assert {v.kind for v in found} == {"steps-after-pause", "executions-after-pause"}


def paused_run(*, resumed: bool, steps_while_paused: int, finished: bool) -> History:
    run = History()
    run.inp(h.Start("invariants", {}), 0.0)
    run.inp(h.Pause("hold"), 0.1)
    for i in range(steps_while_paused):
        run.out(h.StepCompleted(f"s{i}", 1, None, at(0.2 * i + 0.1), 50.0), 0.2 * i + 0.2)
    if resumed:
        run.inp(h.Resume(), 3.0)
        run.out(h.StepCompleted("s9", 1, None, at(3.1), 50.0), 3.2)
    if finished:
        run.out(h.RunCompleted(None), 3.3)
    return run


def test_pause_holds_all_but_the_step_in_flight() -> None:
    fine = paused_run(resumed=True, steps_while_paused=1, finished=True)
    assert check(fine, [ex(f"s{i}", 0.05 + i) for i in (0,)] + [ex("s9", 3.1)]) == []
    broken = paused_run(resumed=True, steps_while_paused=3, finished=True)
    effects = [ex("s0", 0.05), ex("s1", 0.25), ex("s2", 0.45), ex("s9", 3.1)]
    found = check(broken, effects)
    assert [v.kind for v in found] == ["steps-after-pause", "executions-after-pause"]
    assert "progressed after the pause #2" in found[0].evidence
    assert "2 step executions began after the pause" in found[1].evidence


def test_a_resumed_run_that_never_ends_is_a_violation() -> None:
    run = paused_run(resumed=True, steps_while_paused=0, finished=False)
    only(check(run, [ex("s9", 3.1)]), CANCEL_PAUSE, "resumed-run-stuck", "resumed by #3")


# -- I2 re-execution -----------------------------------------------------------------


def test_an_execution_after_the_recorded_outcome_is_a_violation() -> None:
    run, effects, sent = good()
    late = ex("s0", 0.5, value=U1)  # the outcome was recorded at 0.2
    only(check(run, [*effects, late], sent), REEXECUTION, "ran-after-recorded", "0.300s after")


def test_rerunning_an_attempt_already_recorded_as_failed_is_a_violation() -> None:
    run = History()
    start = run.inp(h.Start("invariants", {}), 0.0)
    run.out(h.StepFailed("s0", 1, h.ErrorInfo("E", "x"), at(0.6)), 0.1)
    run.out(h.TimerSet("s0", RETRY, at(0.6), "retry"), 0.1)
    woke = run.timer(RETRY, "s0", "retry", 0.61)
    run.out(h.StepCompleted("s0", 2, None, at(0.62), 10.0), 0.7)
    run.out(h.RunCompleted(None), 0.8)
    sent = Sent(RUN, starts=[start])
    assert woke in run.fired
    fine = [ex("s0", 0.0, attempt=1), ex("s0", 0.62, attempt=2)]
    assert check(run, fine, sent) == []
    stale = ex("s0", 0.3, attempt=1)  # a runner that had not read the failure
    only(check(run, [*fine, stale], sent), REEXECUTION, "attempt 1", "step_failed")


def test_a_recorded_outcome_with_no_execution_is_a_violation() -> None:
    run, _, sent = good()
    only(check(run, [], sent), REEXECUTION, "outcome-without-execution", "no execution of it")
    sent.logs_effects = False
    assert check(run, [], sent) == []


# -- I3 values -----------------------------------------------------------------------


def test_a_value_the_journal_never_recorded_is_a_violation() -> None:
    run, effects, sent = good()
    killed = Execution(RUN, "s0", 1, U2, 4243, wall(0.01), None)  # SIGKILLed mid-step
    found = check(run, [killed, *effects], sent)
    assert [v.kind for v in found] == ["value-not-recorded", "values-differ"]
    assert {v.invariant for v in found} == {VALUES}
    assert U2 in found[0].evidence and "never recorded" in found[0].evidence
    assert "saw 2 different values" in found[1].evidence


def test_a_value_is_not_due_before_the_next_journal_entry() -> None:
    run = History()
    start = run.inp(h.Start("invariants", {}), 0.0)
    in_flight = ex("s0", 0.1, value=U3)
    assert check(run, [in_flight], Sent(RUN, starts=[start]), settled=False) == []


# -- I4 timers -----------------------------------------------------------------------


def napping(*, fire: float, fired: bool, forged: bool = False) -> tuple[History, Sent]:
    run = History()
    start = run.inp(h.Start("invariants", {}), 0.0)
    run.out(h.TimerSet("nap", NAP, at(1.2), "sleep"), 0.1)
    timer = run.timer(NAP, "nap", "sleep", fire, fired=fired)
    run.out(h.SleepCompleted("nap", timer), fire + 0.01)
    run.out(h.RunCompleted(None), fire + 0.02)
    sent = Sent(RUN, starts=[start], forged={timer} if forged else set())
    return run, sent


def test_a_sleep_ended_by_the_servers_timer_on_time_is_fine() -> None:
    run, sent = napping(fire=1.25, fired=True)
    assert check(run, [], sent) == []


def test_a_forged_timer_ending_a_sleep_early_is_a_violation() -> None:
    run, sent = napping(fire=0.5, fired=False, forged=True)
    found = check(run, [], sent)
    assert [v.kind for v in found] == ["ended-early", "forged-timer-used"]
    assert {v.invariant for v in found} == {TIMERS}
    assert "0.690s before its timer was due" in found[0].evidence
    assert "the nemesis forged" in found[1].evidence


def test_a_timer_published_on_the_inbox_is_not_a_fired_one() -> None:
    run, sent = napping(fire=1.25, fired=False)
    only(check(run, [], sent), TIMERS, "timer-not-fired-by-server", "directly on .in", "P_TIMERS")


def test_a_timer_fired_by_another_schedule_is_not_this_steps() -> None:
    run, sent = napping(fire=1.25, fired=True)
    timer = next(seq for seq in run.fired)
    run.fired[timer] = NAMES.timer(RUN, "sleep-1-ffff")
    only(check(run, [], sent), TIMERS, "wrong-schedule", "p.timer.r1.sleep-1-ffff")


def test_a_wait_timing_out_early_is_a_violation() -> None:
    run = History()
    start = run.inp(h.Start("invariants", {}), 0.0)
    run.out(h.WaitStarted("go", "go", at(600)), 0.1)
    run.out(h.TimerSet("go", GO_TIMEOUT, at(600), "wait_timeout"), 0.1)
    timer = run.timer(GO_TIMEOUT, "go", "wait_timeout", 2.0, fired=False)
    run.out(h.WaitTimedOut("go", "go", timer), 2.01)
    run.out(h.RunFailed(h.ErrorInfo("EventTimeout", "late")), 2.02)
    sent = Sent(RUN, starts=[start], forged={timer}, may_fail=True)
    found = check(run, [], sent)
    assert [v.invariant for v in found] == [TIMERS, TIMERS]
    assert "before its timer was due" in found[0].evidence
    assert "the nemesis forged" in found[1].evidence


def test_a_wait_timeout_re_armed_without_a_timer_set_is_judged_by_its_input() -> None:
    # A runner died between wait_started and timer_set; its successor re-armed the
    # schedule without a journal entry: the fired timer input is still the evidence.
    def waited(*, fired: bool) -> tuple[History, Sent]:
        run = History()
        start = run.inp(h.Start("invariants", {}), 0.0)
        run.out(h.WaitStarted("maybe", "maybe", at(1.0)), 0.1)
        timer = run.timer("wait_timeout-1-dddd", "maybe", "wait_timeout", 1.1, fired=fired)
        run.out(h.WaitTimedOut("maybe", "maybe", timer), 1.2)
        run.out(h.RunCompleted(None), 1.3)
        return run, Sent(RUN, starts=[start])

    run, sent = waited(fired=True)
    assert check(run, [], sent) == []
    run, sent = waited(fired=False)
    only(check(run, [], sent), TIMERS, "timer-not-fired-by-server")
    run, sent = waited(fired=True)
    run.messages[2] = msgspec.structs.replace(
        run.messages[2], body=h.Timer("sleep-1-eeee", "nap", "sleep")
    )
    only(check(run, [], sent), TIMERS, "wrong-token", "of step 'nap'")
    run.messages[2] = msgspec.structs.replace(run.messages[2], kind="event", body=h.Event("x"))
    found = [v for v in check(run, [], sent) if v.invariant == TIMERS]
    only(found, TIMERS, "not-a-timer", "which is event")


def retried(*, woken_at: float, fired: bool, begin: float) -> tuple[History, list[Execution]]:
    run = History()
    run.inp(h.Start("invariants", {}), 0.0)
    run.out(h.StepFailed("s0", 1, h.ErrorInfo("E", "x"), at(1.0)), 0.1)
    run.out(h.TimerSet("s0", RETRY, at(1.0), "retry"), 0.1)
    run.timer(RETRY, "s0", "retry", woken_at, fired=fired)
    run.out(h.StepCompleted("s0", 2, None, at(begin), 10.0), begin + 0.1)
    run.out(h.RunCompleted(None), begin + 0.2)
    return run, [ex("s0", 0.0, attempt=1), ex("s0", begin, attempt=2)]


def test_a_retry_before_its_time_woken_by_a_forged_timer_is_a_violation() -> None:
    run, effects = retried(woken_at=1.01, fired=True, begin=1.02)
    assert check(run, effects) == []
    run, effects = retried(woken_at=0.3, fired=False, begin=0.31)
    found = check(run, effects)
    # early is what breaks the promise; the forged timer only woke the run
    assert [v.kind for v in found] == ["retry-early"]
    assert "before the retry was due" in found[0].evidence


def test_a_retry_with_no_timer_at_all_is_fine_when_due() -> None:
    run = History()
    run.inp(h.Start("invariants", {}), 0.0)
    run.out(h.StepFailed("s0", 1, h.ErrorInfo("E", "x"), at(0.5)), 0.1)
    run.out(h.StepCompleted("s0", 2, None, at(0.6), 10.0), 0.7)
    run.out(h.RunCompleted(None), 0.8)
    effects = [ex("s0", 0.0, attempt=1), ex("s0", 0.6, attempt=2)]
    # time decides: a retry that began after retry_at needs no timer message
    assert [v for v in check(run, effects) if v.invariant == TIMERS] == []


# -- I5 inputs -----------------------------------------------------------------------


def test_acknowledged_inputs_missing_from_the_history_are_violations() -> None:
    run, effects, sent = good()
    sent.starts.append(99)
    sent.events.append(98)
    found = check(run, effects, sent)
    assert [v.invariant for v in found] == [INPUTS, INPUTS]
    assert "acknowledged start #99" in found[0].evidence
    assert "acknowledged event #98" in found[1].evidence


def test_a_start_refused_because_an_event_came_first_is_a_violation() -> None:
    run = History()
    early = run.inp(h.Event("go", None), 0.0)
    sent = Sent(RUN, start_refused="RunAlreadyExists", early_events=[early], events=[early])
    only(check(run, [], sent), INPUTS, "start-refused", "RunAlreadyExists", "#1 event")


def test_a_wait_timing_out_past_a_stored_event_is_a_violation() -> None:
    run = History()
    start = run.inp(h.Start("invariants", {}), 0.0)
    event = run.inp(h.Event("maybe", 7), 0.05)
    run.out(h.WaitStarted("maybe", "maybe", at(1.0)), 0.1)
    run.out(h.TimerSet("maybe", "wait_timeout-1-dddd", at(1.0), "wait_timeout"), 0.1)
    timer = run.timer("wait_timeout-1-dddd", "maybe", "wait_timeout", 1.01)
    run.out(h.WaitTimedOut("maybe", "maybe", timer), 1.02)
    run.out(h.RunCompleted({"events": {"maybe": None}}), 1.03)
    found = check(run, [], Sent(RUN, starts=[start], events=[event]))
    only(found, INPUTS, "wait-missed-event", "timed out although event #2")


def test_a_wait_taking_a_later_event_or_an_output_not_showing_it_is_a_violation() -> None:
    run = History()
    start = run.inp(h.Start("invariants", {}), 0.0)
    first = run.inp(h.Event("go", 1), 0.05)
    second = run.inp(h.Event("go", 2), 0.06)
    run.out(h.EventReceived("go", "go", second), 0.1)
    run.out(h.RunCompleted({"events": {"go": 3}}), 0.2)
    found = check(run, [], Sent(RUN, starts=[start], events=[first, second]))
    assert [v.kind for v in found] == ["event-skipped", "output-mismatch"]
    assert "but event #2 of type 'go' came first" in found[0].evidence
    assert "the output shows 3 for wait 'go'" in found[1].evidence


def test_a_run_that_never_ends_or_fails_is_a_violation() -> None:
    run = History()
    start = run.inp(h.Start("invariants", {}), 0.0)
    run.out(h.WaitStarted("go", "go", at(600)), 0.1)
    only(check(run, [], Sent(RUN, starts=[start])), INPUTS, "never-ended")
    run.out(h.RunFailed(h.ErrorInfo("Boom", "no")), 0.2)
    only(check(run, [], Sent(RUN, starts=[start])), INPUTS, "run-failed", "Boom: no")


def test_only_malformed_inputs_may_be_dead_lettered() -> None:
    records = [
        {"seq": 5, "subject": "p.run.r1.in", "reason": "bad kind"},
        {"seq": 6, "subject": "p.run.r2.in", "reason": "run 'r2' has no start"},
        {"seq": 6, "subject": "p.run.r2.in", "reason": "run 'r2' has no start"},
    ]
    found = check_dead_letters(records, {5}, Tally())
    assert found == [
        Violation(
            INPUTS,
            "valid-dead-lettered",
            "r2",
            "valid input #6 on p.run.r2.in was dead-lettered (2 times): \"run 'r2' has no start\"",
        )
    ]


# -- I6 journal ----------------------------------------------------------------------


def test_history_read_later_must_extend_the_earlier_read() -> None:
    run, _, _ = good()
    earlier = list(run.messages[:4])
    assert check_append_only(RUN, earlier, run.messages, Tally()) == []
    rewritten = list(run.messages)
    rewritten[2] = h.Message(3, RUN, "out", "step_completed", h.StepCompleted("s0", 1, 5, "", 1))
    only(check_append_only(RUN, earlier, rewritten, Tally()), JOURNAL, "not append-only")
    only(check_append_only(RUN, earlier, run.messages[:2], Tally()), JOURNAL, "gone (2")


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda r: r.out(h.ValuesRecorded(["late"]), 9.0), "follows the terminal"),
        (lambda r: r.out(h.RunCompleted(None), 9.0), "follows the terminal"),
        (lambda r: r.add("out", h.Invalid("bad JSON"), 9.0), "does not decode: bad JSON"),
    ],
)
def test_nothing_follows_the_terminal_entry_and_every_entry_decodes(
    mutate: Any, words: str
) -> None:
    run, effects, sent = good()
    mutate(run)
    found = check(run, effects, sent)
    assert {v.invariant for v in found} == {JOURNAL}
    assert any(words in v.evidence for v in found), found


def attempts_run(*attempts: int, final: bool = False) -> History:
    run = History()
    run.inp(h.Start("invariants", {}), 0.0)
    for i, attempt in enumerate(attempts):
        t = 0.1 * (i + 1)
        retry_at = None if final else at(t)
        run.out(h.StepFailed("s0", attempt, h.ErrorInfo("E", "x"), retry_at), t)
    return run


def test_attempts_count_up_by_one_and_stop_at_the_final_outcome() -> None:
    effects = [ex("s0", 0.0, attempt=None)] * 3

    def journal(run: History) -> list[Violation]:
        return [v for v in check(run, effects, settled=False) if v.invariant == JOURNAL]

    assert journal(attempts_run(1, 2)) == []
    only(journal(attempts_run(1, 3)), JOURNAL, "attempts go 1 -> 3")
    only(journal(attempts_run(1, 1)), JOURNAL, "attempts go 1 -> 1")
    only(journal(attempts_run(1, 2, final=True)), JOURNAL, "after the step's final outcome")


def test_references_times_and_the_budget_are_checked() -> None:
    run, effects, sent = good()
    wrong = run.messages[5]  # sleep_completed, naming the timer input
    run.messages[5] = h.Message(
        wrong.seq, RUN, "out", "sleep_completed", h.SleepCompleted("nap", 1), wrong.time
    )
    found = [v for v in check(run, effects, sent) if v.invariant == JOURNAL]
    assert "names input #1, which is start" in found[0].evidence
    run, effects, sent = good()
    run.messages[2] = msgspec.structs.replace(
        run.messages[2], body=h.StepCompleted("s0", 1, U1, "yesterday", 1.0)
    )
    only(check(run, effects, sent), JOURNAL, "started_at 'yesterday' is not RFC 3339")
    run, effects, sent = good()
    sent.budget = 5
    only(check(run, effects, sent), JOURNAL, "more than any run of its job can write (5)")


@pytest.mark.parametrize(
    ("entries", "kind"),
    [
        ([h.StepCompleted("", 1, None, at(0.0), 1.0)], "empty-step"),
        ([h.TimerSet("nap", NAP, at(1.0), "nap-time")], "bad-purpose"),
        ([h.ValuesRecorded([])], "empty-values"),
        ([h.SleepCompleted("nap", None), h.SleepCompleted("nap", None)], "second-outcome"),
    ],
)
def test_entries_that_do_not_fit_the_table_are_violations(entries: list[Any], kind: str) -> None:
    run = History()
    start = run.inp(h.Start("invariants", {}), 0.0)
    for body in entries:
        run.out(body, 0.1)
    sent = Sent(RUN, starts=[start], logs_effects=False)
    found = [v for v in check(run, [], sent, settled=False) if v.invariant == JOURNAL]
    only(found, JOURNAL, kind)


def test_a_history_out_of_stream_order_is_a_violation() -> None:
    run, effects, sent = good()
    run.messages[1], run.messages[2] = run.messages[2], run.messages[1]
    only(check(run, effects, sent), JOURNAL, "out-of-order")


def test_a_retry_timer_must_match_its_failure() -> None:
    run = History()
    run.inp(h.Start("invariants", {}), 0.0)
    run.out(h.StepFailed("s0", 1, h.ErrorInfo("E", "x"), at(1.0)), 0.1)
    run.out(h.TimerSet("s0", RETRY, at(2.0), "retry"), 0.1)
    only(check(run, [ex("s0", 0.0)], settled=False), JOURNAL, "but the failure said")


def test_effect_lines_join_begin_and_end() -> None:
    lines = [
        b'{"ev":"begin","id":"a","run":"r1","step":"s0","attempt":1,"value":"v","pid":1,"t":5.0}',
        b'{"ev":"begin","id":"b","run":"r1","step":"s0","attempt":2,"value":"v","pid":2,"t":6.0}',
        b'{"ev":"end","id":"b","ok":true,"t":6.5}',
        b'{"ev":"beg',
    ]
    executions, bad = parse_effects(lines)
    assert bad == 1
    assert executions == [
        Execution("r1", "s0", 1, "v", 1, 5.0, None),
        Execution("r1", "s0", 2, "v", 2, 6.0, 6.5),
    ]


# -- I7 children -------------------------------------------------------------------

CHILD = "r1-0123456789abcdef"
CHILD_TIMEOUT = "child_timeout-1-dddd"


@dataclass
class Family:
    """A parent run that invokes (or starts detached) one child, and that child."""

    parent: History
    effects: list[Execution]
    sent: Sent
    child: History
    child_effects: list[Execution]
    child_sent: Sent

    def check(self, *, settled: bool = True) -> list[Violation]:
        """Every violation of both runs (the child checked like any run)."""
        return check_run(
            self.parent.messages,
            self.effects,
            run_id=RUN,
            names=NAMES,
            sent=self.sent,
            fired=self.parent.fired,
            settled=settled,
            children={CHILD: self.child.messages},
            sent_to={CHILD: self.child_sent},
        ) + check_run(
            self.child.messages,
            self.child_effects,
            run_id=CHILD,
            names=NAMES,
            sent=self.child_sent,
            fired=self.child.fired,
            settled=settled,
        )


def family(*, detached: bool = False, timeout: bool = False) -> Family:
    """s0, then the child (its step c0 gets U2, which the parent took), then the end."""
    parent, child = History(), History(CHILD)
    start = parent.inp(h.Start("invariants", {"child": {"steps": 1}}), 0.0)
    parent.out(h.ValuesRecorded([U1]), 0.2)
    parent.out(h.StepCompleted("s0", 1, U1, at(0.05), 100.0), 0.2)
    parent.out(h.ValuesRecorded([U2]), 0.3)
    link = h.Parent(RUN, "child", detached)
    child.inp(h.Start("inv-child", {"values": [U2]}, link), 0.3)
    parent.out(
        h.ChildStarted("child", CHILD, "inv-child", at(600) if timeout else None, detached), 0.31
    )
    if timeout:
        parent.out(h.TimerSet("child", CHILD_TIMEOUT, at(600), "child_timeout"), 0.31)
    child.out(h.StepCompleted("c0", 1, U2, at(0.4), 100.0), 0.5)
    child.out(h.RunCompleted({"values": [U2]}), 0.51)
    if detached:
        told: dict[str, Any] = {"run_id": CHILD, "detached": True}
    else:
        ended = parent.inp(h.ChildEnded(CHILD, "completed", {"values": [U2]}), 0.52)
        parent.out(h.ChildResult("child", CHILD, "completed", ended), 0.53)
        told = {"status": "completed", "output": {"values": [U2]}}
    parent.out(h.RunCompleted({"values": [U1], "child": told}), 0.6)
    return Family(
        parent,
        [ex("s0", 0.05, value=U1)],
        Sent(RUN, starts=[start], budget=30),
        child,
        [ex("c0", 0.4, value=U2, run=CHILD)],
        Sent(CHILD, starts=[], budget=20),
    )


def test_a_good_child_run_keeps_every_invariant_on_both_sides() -> None:
    for kwargs in ({}, {"timeout": True}, {"detached": True}):
        tally = Tally()
        fam = family(**kwargs)
        assert (
            check_run(
                fam.parent.messages,
                fam.effects,
                run_id=RUN,
                names=NAMES,
                sent=fam.sent,
                children={CHILD: fam.child.messages},
                tally=tally,
            )
            == []
        ), kwargs
        assert tally.counts[CHILDREN] >= 2, kwargs
        assert fam.check() == [], kwargs


def test_a_child_named_by_child_started_must_have_its_start() -> None:
    fam = family()
    fam.child = History(CHILD)
    found = [v for v in fam.check(settled=False) if v.invariant == CHILDREN]
    only(found, CHILDREN, "child-not-started", "holds no start")
    fam = family()
    fam.child.messages[0] = msgspec.structs.replace(
        fam.child.messages[0], body=h.Start("inv-child", {"values": [U2]}, h.Parent("r9", "x"))
    )
    only(fam.check(), CHILDREN, "wrong-child", "r9")


def test_a_second_stored_child_start_is_a_violation_unless_the_harness_sent_it() -> None:
    fam = family()
    extra = fam.child.inp(fam.child.messages[0].body, 0.45)
    only(fam.check(), CHILDREN, "child-started-twice", f"#{extra}")
    fam.child_sent.starts.append(extra)  # a raw duplicate the workload published
    assert fam.check() == []


def test_the_child_result_and_the_output_must_match_the_childs_end() -> None:
    fam = family()
    fam.child.messages[-1] = msgspec.structs.replace(
        fam.child.messages[-1], kind="run_cancelled", body=h.RunCancelled(None, None)
    )
    found = [v for v in fam.check() if v.invariant == CHILDREN]
    assert {v.kind for v in found} == {"result-mismatch", "output-mismatch"}, found
    assert any("'completed', the child's" in v.evidence for v in found), found
    fam = family()
    parent_end = fam.parent.messages[-1]
    fam.parent.messages[-1] = msgspec.structs.replace(
        parent_end,
        body=h.RunCompleted({"child": {"status": "completed", "output": {"values": ["x"]}}}),
    )
    only(fam.check(), CHILDREN, "output-mismatch", "'x'")


def test_a_result_taken_before_the_child_ended_is_a_violation() -> None:
    fam = family()
    del fam.child.messages[-1]  # the child never ended, yet the parent took its end
    found = [v for v in fam.check(settled=False) if v.invariant == CHILDREN]
    only(found, CHILDREN, "result-before-end", "no terminal entry")


def test_the_parent_goes_no_further_than_its_invoke_until_the_child_ended() -> None:
    fam = family()
    result = fam.parent.messages.pop(-2)  # child_result ...
    ended = fam.parent.messages.pop(-2)  # ... and the child_ended it took
    end = fam.parent.messages.pop()
    fam.parent.add("out", h.ValuesRecorded([U3]), 0.4)
    fam.parent.add("out", h.StepCompleted("s1", 1, U3, at(0.41), 10.0), 0.42)
    for msg in (ended, result, end):
        fam.parent.messages.append(msgspec.structs.replace(msg, seq=len(fam.parent.messages) + 1))
    fam.effects.append(ex("s1", 0.41, value=U3))
    found = [v for v in fam.check() if v.invariant == CHILDREN]
    assert {v.kind for v in found} == {"went-past-invoke", "ran-during-invoke"}, found
    assert any("step_completed 's1'" in v.evidence for v in found), found


def cancelled_while_waiting(*, cancel_sent: bool, child_ends: bool) -> Family:
    fam = family()
    del fam.parent.messages[-3:]  # no child_ended, no child_result, no completion
    cancel = fam.parent.inp(h.Cancel("nemesis"), 0.35)
    fam.parent.out(h.RunCancelled("nemesis", cancel), 0.36)
    del fam.child.messages[-1]
    if cancel_sent:
        cancel = fam.child.inp(h.Cancel(f"parent run {RUN} ended"), 0.37)
        if child_ends:
            fam.child.out(h.RunCancelled("parent ended", cancel), 0.52)
    elif child_ends:
        fam.child.out(h.RunCompleted({"values": [U2]}), 0.52)
    return fam


def test_a_parent_cancelled_while_waiting_leaves_its_child_cancelled() -> None:
    assert cancelled_while_waiting(cancel_sent=True, child_ends=True).check() == []
    fam = cancelled_while_waiting(cancel_sent=False, child_ends=True)
    only(fam.check(), CHILDREN, "child-not-cancelled", "never sent a cancel")
    fam = cancelled_while_waiting(cancel_sent=False, child_ends=False)
    found = [v for v in fam.check() if v.invariant == CHILDREN]
    only(found, CHILDREN, "orphaned-child", "(no cancel)")
    # still being watched: not yet a violation
    fam = cancelled_while_waiting(cancel_sent=False, child_ends=False)
    assert [v for v in fam.check(settled=False) if v.invariant == CHILDREN] == []


def test_a_detached_child_is_never_cancelled_and_the_output_names_it() -> None:
    fam = family(detached=True)
    fam.child.inp(h.Cancel("who?"), 0.45)
    found = [v for v in fam.check() if v.invariant == CHILDREN]
    only(found, CHILDREN, "detached-child-cancelled")
    fam = family(detached=True)
    fam.parent.messages[-1] = msgspec.structs.replace(
        fam.parent.messages[-1], body=h.RunCompleted({"child": {"run_id": "r1-other"}})
    )
    only(fam.check(), CHILDREN, "output-mismatch", "r1-other")


def test_a_child_runs_a_recorded_step_once_and_sees_its_parents_value() -> None:
    fam = family()
    fam.child_effects.append(ex("c0", 0.7, value=U2, run=CHILD))  # after c0 was recorded
    v = only(fam.check(), REEXECUTION, "ran-after-recorded")
    assert v.run_id == CHILD
    fam = family()
    fam.child_effects = [ex("c0", 0.4, value=U3, run=CHILD)]  # a value nobody recorded
    v = only(fam.check(), VALUES, "value-not-recorded", U3)
    assert v.run_id == CHILD


def test_child_entries_fit_the_table_and_time_out_no_earlier_than_due() -> None:
    fam = family(timeout=True)
    assert fam.check() == []  # a child_timeout timer is a known purpose
    fam.parent.out(h.ChildTimedOut("child", CHILD), 0.7)
    found = fam.check()
    assert {(v.invariant, v.kind) for v in found} == {
        (TIMERS, "child-timed-out-early"),
        (JOURNAL, "second-outcome"),
        (JOURNAL, "after-terminal"),
    }, found
    fam = family()
    fam.parent.out(h.ChildStarted("child", CHILD, "inv-child"), 0.32)
    assert ("second-child-started", JOURNAL) in {(v.kind, v.invariant) for v in fam.check()}
    fam = family()
    result = fam.parent.messages[-2]
    fam.parent.messages[-2] = msgspec.structs.replace(
        result, body=msgspec.structs.replace(result.body, input_seq=1)
    )
    assert any(v.kind == "bad-reference" and "which is start" in v.evidence for v in fam.check()), (
        fam.check()
    )
