"""The promises as invariants over one run's history and the effect log: pure functions.

Design note. A chaos run ends with every run's history (``Log.read``: inputs
and journal, each with its stream sequence and stream timestamp), the raw
headers of its inputs (to tell a timer fired by the server from one published
on ``.in``), what the harness sent and the server acknowledged, and the effect
log the steps wrote (one record per execution, SIGKILLed ones included). Each
``check_*`` function reads those and returns the ``Violation``s it finds, each
naming its invariant, the run and the evidence; ``check_run`` applies them all.
Nothing here does I/O, so every check is unit-tested on hand-written
histories (``test_checker.py``).

Times: journal timestamps are the server's, cut to milliseconds; effect times
are the runners' ``time.time()`` on the same machine. A comparison "B happened
after A" therefore allows ``SLACK`` for the truncation, never more: a true
violation (a step started after its outcome was recorded, a sleep ended before
its timer) is off by far more than a millisecond.

The invariants (numbered as in the brief that asked for them):

I1 cancel/pause: after a stored cancel, at most one step (the one in flight)
   makes progress before ``run_cancelled``; the same between a pause and its
   resume; a resumed run goes on to its end.
I2 re-execution: a step function runs again only if its previous attempt has
   no recorded outcome.
I3 values: every value a step saw (``ctx.uuid()`` from the handler) is one the
   journal recorded, and every execution of a step saw the same one.
I4 timers: a sleep, wait timeout or retry ends no earlier than its timer's
   time, and the timer input it names was fired by the server for that step.
I5 inputs: every acknowledged start and event is in the run's history and
   acted on; only the malformed inputs sent on purpose are dead-lettered.
I6 journal: append-only, well-formed, bounded.
I7 children: a child run (``step.invoke``, ``step.start_run``) named by its
   parent's ``child_started`` was started once, by that step, and its own history
   keeps I1-I6; an invoke's ``child_result`` (and the parent's output) match the
   child's terminal entry, and the parent goes no further until the child ended;
   a parent that ended while waiting leaves its child cancelled (or already
   ended); a detached child is never cancelled by anyone here.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from jetlane import Names
from jetlane import wire as h

SLACK = 0.002  # seconds: stream times are cut to milliseconds
BURST = 0.25  # seconds: executions of one parallel group begin within this of each other
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

CANCEL_PAUSE = "I1 cancel/pause"
REEXECUTION = "I2 re-execution"
VALUES = "I3 values"
TIMERS = "I4 timers"
INPUTS = "I5 inputs"
JOURNAL = "I6 journal"
CHILDREN = "I7 children"
INVARIANTS = (CANCEL_PAUSE, REEXECUTION, VALUES, TIMERS, INPUTS, JOURNAL, CHILDREN)

OUTCOMES = (
    h.StepCompleted,
    h.StepFailed,
    h.SleepCompleted,
    h.EventReceived,
    h.WaitTimedOut,
    h.ChildResult,
    h.ChildTimedOut,
)
STATUS: dict[type[Any], str] = {
    h.RunCompleted: "completed",
    h.RunFailed: "failed",
    h.RunCancelled: "cancelled",
}


@dataclass(frozen=True)
class Violation:
    invariant: str
    kind: str  # a short code, to count violations of one invariant by what broke it
    run_id: str
    evidence: str

    def __str__(self) -> str:
        return f"[{self.invariant}: {self.kind}] run {self.run_id}: {self.evidence}"


@dataclass(frozen=True)
class Execution:
    """One execution of a step function, from the effect log."""

    run_id: str
    step: str
    attempt: int | None  # as the engine counted it; None when it could not be read
    value: Any
    pid: int
    begin: float
    end: float | None = None  # None: killed mid-step (or still running)

    def describe(self) -> str:
        attempt = "?" if self.attempt is None else self.attempt
        return f"execution of {self.step!r} attempt {attempt} by pid {self.pid}"


@dataclass
class Sent:
    """What the harness did to one run and what the server acknowledged (stream seqs)."""

    run_id: str
    starts: list[int] = field(default_factory=list)
    start_refused: str | None = None  # why a create-once start was refused
    events: list[int] = field(default_factory=list)
    early_events: list[int] = field(default_factory=list)  # sent before the start
    forged: set[int] = field(default_factory=set)  # timer inputs the nemesis forged
    malformed: set[int] = field(default_factory=set)
    expect_end: bool = True  # nothing the harness did holds the run forever
    may_fail: bool = False
    logs_effects: bool = True  # its job's steps write the effect log
    budget: int | None = None  # most journal entries a run of its job may have
    unsure_starts: bool = False  # a raw start whose ack was lost: it may be stored, unnamed


class Tally:
    """Counts the checks made, per invariant (one per predicate evaluated)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, invariant: str, n: int = 1) -> None:
        self.counts[invariant] += n


def parse_effects(lines: Iterable[bytes]) -> tuple[list[Execution], int]:
    """Executions from effect-log lines (``begin`` joined with its ``end``); bad lines counted."""
    begins: dict[str, dict[str, Any]] = {}
    ends: dict[str, float] = {}
    bad = 0
    for line in lines:
        try:
            record = msgspec.json.decode(line)
            if record["ev"] == "begin":
                begins[record["id"]] = record
            else:
                ends[record["id"]] = float(record["t"])
        except (msgspec.DecodeError, KeyError, TypeError, ValueError):
            bad += 1
    executions = [
        Execution(
            run_id=r["run"],
            step=r["step"],
            attempt=r.get("attempt"),
            value=r.get("value"),
            pid=int(r["pid"]),
            begin=float(r["t"]),
            end=ends.get(key),
        )
        for key, r in begins.items()
    ]
    executions.sort(key=lambda e: e.begin)
    return executions, bad


def epoch(stamp: str) -> float | None:
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _clock(t: float | None) -> str:
    if t is None:
        return "?"
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S.%f")[:-3]


def _entry(msg: h.Message) -> str:
    step = getattr(msg.body, "step", None)
    what = f"{msg.kind} {step!r}" if step is not None else msg.kind
    attempt = getattr(msg.body, "attempt", None)
    if attempt is not None:
        what += f" attempt {attempt}"
    return f"#{msg.seq} {what} at {_clock(epoch(msg.time))}"


def _journal(history: Sequence[h.Message]) -> list[h.Message]:
    return [m for m in history if m.direction == "out"]


def _terminal(history: Sequence[h.Message]) -> h.Message | None:
    return next((m for m in history if isinstance(m.body, h.TERMINAL)), None)


# -- I1 ------------------------------------------------------------------------


def _progress(entries: Sequence[h.Message]) -> tuple[list[str], int]:
    """Distinct steps with entries, and how many step outcomes, among ``entries``."""
    steps: list[str] = []
    outcomes = 0
    for msg in entries:
        step = getattr(msg.body, "step", None)
        if step is None or isinstance(msg.body, h.RunBlocked):
            continue
        if step not in steps:
            steps.append(step)
        outcomes += isinstance(msg.body, OUTCOMES)
    return steps, outcomes


def _held(
    run_id: str,
    what: str,
    start: h.Message,
    stop: h.Message | None,
    history: Sequence[h.Message],
    executions: Sequence[Execution],
    tally: Tally,
) -> list[Violation]:
    """At most one step (the one in flight) progresses between ``start`` and ``stop``.

    A run whose first steps run in parallel (``parallel`` in its input) may have all
    of that group in flight, started together from one read of the inbox: each may
    record one outcome after the cancel or pause, and their executions may begin in
    one burst just after it; any later execution, or a second outcome of one step
    (a retry run meanwhile), still breaks the promise.
    """
    found = []
    group = _parallel_group(history)
    end_seq = stop.seq if stop is not None else None
    terminal = _terminal(history)
    if terminal is not None and (end_seq is None or terminal.seq < end_seq):
        end_seq = terminal.seq
    after = [
        m for m in _journal(history) if m.seq > start.seq and (end_seq is None or m.seq < end_seq)
    ]
    if what == "pause":
        # A pause holds step.do attempts; a sleep or wait the handler had already
        # decided on (its timer_set written just after the pause) starts no work.
        after = [m for m in after if isinstance(m.body, OUTCOMES)]
    steps, outcomes = _progress(after)
    tally(CANCEL_PAUSE)
    in_group = group and set(steps) <= group
    if in_group:
        counts = [sum(getattr(m.body, "step", None) == s for m in after) for s in steps]
        broken = any(n > 1 for n in counts)
    else:
        broken = len(steps) > 1 or outcomes > 1
    if broken:
        listed = "; ".join(_entry(m) for m in after if getattr(m.body, "step", None))
        found.append(
            Violation(
                CANCEL_PAUSE,
                f"steps-after-{what}",
                run_id,
                f"{len(steps)} steps ({outcomes} outcomes) progressed after the {what} "
                f"{_entry(start)}: {listed}",
            )
        )
    since = epoch(start.time)
    until = epoch(stop.time) if stop is not None else None
    if since is not None:
        began = [
            e
            for e in executions
            if e.begin > since + SLACK and (until is None or e.begin < until - SLACK)
        ]
        if group and began and {e.step for e in began} <= group:
            burst = min(e.begin for e in began) + BURST
            began = [e for e in began if e.begin > burst][:1] + began[:1]
        tally(CANCEL_PAUSE)
        if len(began) > 1:
            listed = "; ".join(
                f"{e.describe()} began {e.begin - since:+.3f}s after it" for e in began
            )
            found.append(
                Violation(
                    CANCEL_PAUSE,
                    f"executions-after-{what}",
                    run_id,
                    f"{len(began)} step executions began after the {what} {_entry(start)} "
                    f"(one in flight is allowed): {listed}",
                )
            )
    return found


def _parallel_group(history: Sequence[h.Message]) -> set[str]:
    """The step ids of the ``invariants`` run's parallel group (its first steps)."""
    start = next((m.body for m in history if isinstance(m.body, h.Start)), None)
    fanned = start.input.get("parallel", 0) if start and isinstance(start.input, dict) else 0
    return {f"s{i}" for i in range(int(fanned or 0))}


def check_cancel_pause(
    run_id: str,
    history: Sequence[h.Message],
    executions: Sequence[Execution],
    tally: Tally,
    *,
    settled: bool = True,
) -> list[Violation]:
    """I1: a stored cancel or pause stops new steps; a resumed run goes on to its end.

    ``settled``: the harness waited for the run to end, so a run that has not
    ended was stopped by something (else it is still being watched).
    """
    found: list[Violation] = []
    terminal = _terminal(history)
    inputs = [m for m in history if m.direction == "in"]
    cancel = next(
        (
            m
            for m in inputs
            if isinstance(m.body, h.Cancel) and (terminal is None or m.seq < terminal.seq)
        ),
        None,
    )
    if cancel is not None:
        found += _held(run_id, "cancel", cancel, None, history, executions, tally)
        tally(CANCEL_PAUSE)
        if terminal is None and settled:
            last = _journal(history)[-1:] or [cancel]
            found.append(
                Violation(
                    CANCEL_PAUSE,
                    "cancel-ignored",
                    run_id,
                    f"the cancel {_entry(cancel)} was never acted on: no terminal entry "
                    f"(last journal entry {_entry(last[0])})",
                )
            )
    paused: h.Message | None = None
    resumed: h.Message | None = None
    for msg in inputs:
        if terminal is not None and msg.seq > terminal.seq:
            break
        if isinstance(msg.body, h.Pause) and paused is None:
            paused = msg
        elif isinstance(msg.body, h.Resume) and paused is not None:
            found += _held(run_id, "pause", paused, msg, history, executions, tally)
            paused, resumed = None, msg
    if paused is not None:
        found += _held(run_id, "pause", paused, None, history, executions, tally)
    elif resumed is not None and cancel is None and settled:
        tally(CANCEL_PAUSE)
        if terminal is None:
            found.append(
                Violation(
                    CANCEL_PAUSE,
                    "resumed-run-stuck",
                    run_id,
                    f"resumed by {_entry(resumed)} but never went on to an end "
                    f"(last entry {_entry(history[-1])})",
                )
            )
    return found


# -- I2 ------------------------------------------------------------------------


def _outcomes(history: Sequence[h.Message]) -> dict[str, list[h.Message]]:
    by_step: dict[str, list[h.Message]] = {}
    for msg in _journal(history):
        if isinstance(msg.body, h.StepCompleted | h.StepFailed):
            by_step.setdefault(msg.body.step, []).append(msg)
    return by_step


def _final(body: Any) -> bool:
    return isinstance(body, h.StepCompleted) or (
        isinstance(body, h.StepFailed) and body.retry_at is None
    )


def check_reexecution(
    run_id: str,
    history: Sequence[h.Message],
    executions: Sequence[Execution],
    tally: Tally,
    *,
    logs_effects: bool = True,
) -> list[Violation]:
    """I2: no execution of a (step, attempt) the journal had recorded when it began.

    With ``logs_effects``, also: every attempt the journal records has an execution.
    """
    found = []
    outcomes = _outcomes(history)
    for ex in executions:
        tally(REEXECUTION)
        for msg in outcomes.get(ex.step, []):
            recorded = epoch(msg.time)
            if recorded is None or ex.begin <= recorded + SLACK:
                continue
            body = msg.body
            if _final(body) or (ex.attempt is not None and body.attempt >= ex.attempt):
                found.append(
                    Violation(
                        REEXECUTION,
                        "ran-after-recorded",
                        run_id,
                        f"{ex.describe()} began at {_clock(ex.begin)}, "
                        f"{ex.begin - recorded:.3f}s after the journal recorded "
                        f"{_entry(msg)}",
                    )
                )
                break
    if not logs_effects:
        return found
    ran: Counter[tuple[str, int | None]] = Counter((e.step, e.attempt) for e in executions)
    per_step: Counter[str] = Counter(e.step for e in executions)
    for step, msgs in outcomes.items():
        for msg in msgs:
            tally(REEXECUTION)
            attempt = msg.body.attempt
            known = any(a is not None for s, a in ran if s == step)
            missing = ran[(step, attempt)] == 0 if known else per_step[step] < len(msgs)
            if missing:
                found.append(
                    Violation(
                        REEXECUTION,
                        "outcome-without-execution",
                        run_id,
                        f"the journal records {_entry(msg)} but no execution of it is in "
                        "the effect log",
                    )
                )
    return found


# -- I3 ------------------------------------------------------------------------


def check_values(
    run_id: str, history: Sequence[h.Message], executions: Sequence[Execution], tally: Tally
) -> list[Violation]:
    """I3: each value a step saw is recorded in ``values_recorded``; retries see the same."""
    found = []
    recorded: list[Any] = []
    for msg in _journal(history):
        if isinstance(msg.body, h.ValuesRecorded):
            recorded.extend(msg.body.values)
    known = set(map(str, recorded))
    start = next((m.body for m in history if isinstance(m.body, h.Start)), None)
    given = start.input.get("values") if start and isinstance(start.input, dict) else None
    if start is not None and start.parent is not None and isinstance(given, list):
        known |= set(map(str, given))  # a child's values: its parent took and recorded them
    times = [t for t in (epoch(m.time) for m in _journal(history)) if t is not None]
    for ex in executions:
        if ex.value is None:
            continue
        # Values are "written before the next journal entry": due once any entry
        # follows the execution's start (a step still in flight may not have one yet).
        if not any(t > ex.begin + SLACK for t in times):
            continue
        tally(VALUES)
        if str(ex.value) not in known:
            found.append(
                Violation(
                    VALUES,
                    "value-not-recorded",
                    run_id,
                    f"{ex.describe()} (began {_clock(ex.begin)}) saw ctx.uuid() "
                    f"{ex.value}, which the journal never recorded (recorded: "
                    f"{len(recorded)} values)",
                )
            )
    seen: dict[str, list[Execution]] = {}
    for ex in executions:
        if ex.value is not None:
            seen.setdefault(ex.step, []).append(ex)
    for step, group in seen.items():
        tally(VALUES)
        values = {str(e.value) for e in group}
        if len(values) > 1:
            listed = "; ".join(f"{e.describe()}: {e.value}" for e in group)
            found.append(
                Violation(
                    VALUES,
                    "values-differ",
                    run_id,
                    f"the executions of {step!r} saw {len(values)} different values: {listed}",
                )
            )
    return found


# -- I4 ------------------------------------------------------------------------


def _timer_origin(
    seq: int, token: str, run_id: str, names: Names, fired: Mapping[int, str], sent: Sent
) -> tuple[str, str] | None:
    """Why input ``seq`` is not the server's firing of timer ``token`` (kind, evidence)."""
    scheduler = fired.get(seq)
    if scheduler == names.timer(run_id, token):
        return None
    if scheduler is not None:
        return (
            "wrong-schedule",
            f"input #{seq} was fired by schedule {scheduler!r}, not {token!r}'s",
        )
    if seq in sent.forged:
        return "forged-timer-used", f"input #{seq} is a timer the nemesis forged on .in"
    return "timer-not-fired-by-server", (
        f"input #{seq} was published directly on .in, not fired by the server "
        f"(no Nats-Stream-Source from {names.timers_stream}: a runner's in-memory timer)"
    )


def check_timers(
    run_id: str,
    history: Sequence[h.Message],
    executions: Sequence[Execution],
    tally: Tally,
    *,
    names: Names,
    fired: Mapping[int, str],
    sent: Sent,
) -> list[Violation]:
    """I4: every timer that ended a sleep, wait or retry wait was real and on time.

    ``fired`` maps the seq of each input the runs stream sourced from the timers
    stream to its ``Nats-Scheduler`` header (the schedule that fired it).
    """
    found = []
    by_seq = {m.seq: m for m in history}
    timer_sets: dict[tuple[str, str], h.Message] = {}
    waits: dict[str, h.WaitStarted] = {}
    invokes: dict[str, h.ChildStarted] = {}
    for msg in _journal(history):
        body = msg.body
        if isinstance(body, h.TimerSet):
            timer_sets.setdefault((body.step, body.purpose), msg)
        elif isinstance(body, h.WaitStarted):
            waits.setdefault(body.step, body)
        elif isinstance(body, h.ChildStarted):
            invokes.setdefault(body.step, body)

    def ended(msg: h.Message, due: str | None, purpose: str, input_seq: int | None) -> None:
        step = msg.body.step
        due_at = epoch(due) if due is not None else None
        at = epoch(msg.time)
        if due_at is not None and at is not None:
            tally(TIMERS)
            if at < due_at - SLACK:
                found.append(
                    Violation(
                        TIMERS,
                        "ended-early",
                        run_id,
                        f"{_entry(msg)} came {due_at - at:.3f}s before its timer was due "
                        f"({due}); it names input #{input_seq}",
                    )
                )
        if input_seq is None:
            return
        tally(TIMERS)
        timer = by_seq.get(input_seq)
        if timer is None or not isinstance(timer.body, h.Timer):
            found.append(
                Violation(
                    TIMERS,
                    "not-a-timer",
                    run_id,
                    f"{_entry(msg)} names input #{input_seq}, which is "
                    f"{timer.kind if timer is not None else 'not in the history'}",
                )
            )
            return
        # The armed token: from the timer_set, else (a runner died between the wait's
        # or sleep's entry and its timer_set, and a successor re-armed the schedule
        # without a journal entry) the step and purpose the timer input names.
        armed = timer_sets.get((step, purpose))
        token = armed.body.timer if armed is not None else timer.body.timer
        why = _timer_origin(input_seq, token, run_id, names, fired, sent)
        if timer.body.timer != token or (timer.body.step, timer.body.purpose) != (step, purpose):
            why = (
                "wrong-token",
                (
                    f"input #{input_seq} is timer {timer.body.timer!r} of step "
                    f"{timer.body.step!r} ({timer.body.purpose}), not {token!r}"
                ),
            )
        if why is not None:
            fired_at = epoch(timer.time)
            early = (
                f", {due_at - fired_at:.3f}s before it was due"
                if due_at is not None and fired_at is not None and fired_at < due_at
                else ""
            )
            found.append(Violation(TIMERS, why[0], run_id, f"{_entry(msg)}: {why[1]}{early}"))

    for msg in _journal(history):
        body = msg.body
        if isinstance(body, h.SleepCompleted):
            armed = timer_sets.get((body.step, "sleep"))
            due = armed.body.fire_at if armed is not None else None
            if due is not None or body.input_seq is not None:
                ended(msg, due, "sleep", body.input_seq)
        elif isinstance(body, h.WaitTimedOut):
            wait = waits.get(body.step)
            ended(
                msg, wait.timeout_at if wait is not None else None, "wait_timeout", body.input_seq
            )
        elif isinstance(body, h.ChildTimedOut):
            invoke = invokes.get(body.step)
            due = invoke.timeout_at if invoke is not None else None
            due_at = epoch(due) if due is not None else None
            at = epoch(msg.time)
            tally(TIMERS)
            if due_at is None or (at is not None and at < due_at - SLACK):
                found.append(
                    Violation(
                        TIMERS,
                        "child-timed-out-early",
                        run_id,
                        f"{_entry(msg)} gave up on child run {body.run_id!r} "
                        + (
                            f"{due_at - at:.3f}s before its deadline ({due})"
                            if due_at is not None and at is not None
                            else "although its invoke had no timeout"
                        ),
                    )
                )
    found += _retries(run_id, history, executions, tally, names, fired, sent)
    return found


def _retries(
    run_id: str,
    history: Sequence[h.Message],
    executions: Sequence[Execution],
    tally: Tally,
    names: Names,
    fired: Mapping[int, str],
    sent: Sent,
) -> list[Violation]:
    """A retry attempt starts no earlier than ``retry_at`` (time decides, not a message)."""
    found = []
    for step, msgs in _outcomes(history).items():
        for failed, following in itertools.pairwise(msgs):
            body = failed.body
            if not isinstance(body, h.StepFailed) or body.retry_at is None:
                continue
            due = epoch(body.retry_at)
            assert due is not None
            nxt = following.body
            tally(TIMERS)
            begun = epoch(nxt.started_at) if isinstance(nxt, h.StepCompleted) else None
            early = [
                e
                for e in executions
                if e.step == step and e.attempt == nxt.attempt and e.begin < due - SLACK
            ]
            if (begun is not None and begun < due - SLACK) or early:
                when = early[0].begin if early else begun
                assert when is not None
                found.append(
                    Violation(
                        TIMERS,
                        "retry-early",
                        run_id,
                        f"{_entry(following)} began at {_clock(when)}, {due - when:.3f}s "
                        f"before the retry was due ({body.retry_at}, {_entry(failed)})",
                    )
                )
            # Whether a timer input woke it does not matter: a timer message only
            # wakes a run, time decides (README); a forged one cannot end the delay.
    return found


# -- I5 ------------------------------------------------------------------------


def check_inputs(
    run_id: str,
    history: Sequence[h.Message],
    tally: Tally,
    *,
    sent: Sent,
    settled: bool = True,
) -> list[Violation]:
    """I5: every acknowledged start and event is in the history and acted on."""
    found = []
    by_seq = {m.seq: m for m in history}
    starts = [m for m in history if isinstance(m.body, h.Start)]
    for kind, seqs, want in (
        ("start", sent.starts, h.Start),
        ("event", sent.events, h.Event),
    ):
        for seq in seqs:
            tally(INPUTS)
            msg = by_seq.get(seq)
            if msg is None or not isinstance(msg.body, want):
                found.append(
                    Violation(
                        INPUTS,
                        "ack-missing",
                        run_id,
                        f"the acknowledged {kind} #{seq} is not in the run's history "
                        f"(found {msg.kind if msg else 'nothing'} there)",
                    )
                )
    if sent.start_refused is not None:
        tally(INPUTS)
        if not sent.starts and not starts:
            stored = ", ".join(f"#{m.seq} {m.kind}" for m in history) or "nothing"
            early = f" ({len(sent.early_events)} event(s) sent before it)" * bool(sent.early_events)
            found.append(
                Violation(
                    INPUTS,
                    "start-refused",
                    run_id,
                    f"the start of a new run was refused: {sent.start_refused}{early}; "
                    f"the inbox holds {stored}",
                )
            )
    found += _waits(run_id, history, tally, sent)
    terminal = _terminal(history)
    held = any(isinstance(m.body, h.Cancel | h.Resume) for m in history)
    if starts and settled and sent.expect_end and not held:  # else I1 says why
        tally(INPUTS)
        if terminal is None:
            last = _journal(history)[-1:]
            found.append(
                Violation(
                    INPUTS,
                    "never-ended",
                    run_id,
                    "the run never ended"
                    + (f" (last journal entry {_entry(last[0])})" if last else " (empty journal)"),
                )
            )
    if terminal is not None and isinstance(terminal.body, h.RunFailed) and not sent.may_fail:
        tally(INPUTS)
        error = terminal.body.error
        found.append(
            Violation(
                INPUTS,
                "run-failed",
                run_id,
                f"the run failed: {error.type}: {error.message} ({_entry(terminal)})",
            )
        )
    return found


def _waits(run_id: str, history: Sequence[h.Message], tally: Tally, sent: Sent) -> list[Violation]:
    """Each wait took the first unused event of its type; a completed output shows it."""
    found = []
    events = [m for m in history if isinstance(m.body, h.Event)]
    used: set[int] = set()
    got: dict[str, Any] = {}
    for msg in _journal(history):
        body = msg.body
        if isinstance(body, h.EventReceived | h.WaitTimedOut):
            tally(INPUTS)
            limit = None
            if isinstance(body, h.WaitTimedOut):
                # Decided by the timer input it names, or (input_seq null: by the clock)
                # at the moment its entry was written.
                limit = body.input_seq if body.input_seq is not None else msg.seq
            first = next(
                (
                    e
                    for e in events
                    if e.body.type == body.type
                    and e.seq not in used
                    and (limit is None or e.seq < limit)
                ),
                None,
            )
            if isinstance(body, h.EventReceived):
                used.add(body.input_seq)
                event = next((e for e in events if e.seq == body.input_seq), None)
                got[body.step] = event.body.payload if event is not None else None
                if first is not None and first.seq < body.input_seq:
                    found.append(
                        Violation(
                            INPUTS,
                            "event-skipped",
                            run_id,
                            f"{_entry(msg)} took event #{body.input_seq}, but event "
                            f"#{first.seq} of type {body.type!r} came first and was never used",
                        )
                    )
            else:
                got[body.step] = None
                if first is not None:
                    found.append(
                        Violation(
                            INPUTS,
                            "wait-missed-event",
                            run_id,
                            f"{_entry(msg)} timed out although event #{first.seq} of type "
                            f"{body.type!r} was stored before its timer #{limit}",
                        )
                    )
    terminal = _terminal(history)
    if terminal is not None and isinstance(terminal.body, h.RunCompleted):
        output = terminal.body.output
        shown = output.get("events") if isinstance(output, dict) else None
        if isinstance(shown, dict):
            for step, payload in got.items():
                if step not in shown:
                    continue
                tally(INPUTS)
                if shown[step] != payload:
                    found.append(
                        Violation(
                            INPUTS,
                            "output-mismatch",
                            run_id,
                            f"the output shows {shown[step]!r} for wait {step!r}, but the "
                            f"journal says it got {payload!r}",
                        )
                    )
    return found


def check_dead_letters(
    records: Sequence[Mapping[str, Any]], malformed: set[int], tally: Tally
) -> list[Violation]:
    """I5: the dead-letter subjects hold only the malformed inputs sent on purpose."""
    found = []
    copies = Counter(record.get("seq") for record in records)
    reported: set[Any] = set()
    for record in records:
        seq = record.get("seq")
        if seq in reported:
            continue  # a redelivered input dead-lettered again: one violation, counted
        reported.add(seq)
        tally(INPUTS)
        if seq in malformed:
            continue
        subject = str(record.get("subject", ""))
        parts = subject.split(".")
        run_id = parts[2] if len(parts) > 3 else "?"
        times = f" ({copies[seq]} times)" if copies[seq] > 1 else ""
        found.append(
            Violation(
                INPUTS,
                "valid-dead-lettered",
                run_id,
                f"valid input #{seq} on {subject} was dead-lettered{times}: "
                f"{record.get('reason')!r}",
            )
        )
    return found


# -- I6 ------------------------------------------------------------------------

_TIME_FIELDS = ("started_at", "retry_at", "fire_at", "timeout_at")
_REFERS: dict[type[Any], type[Any]] = {
    h.SleepCompleted: h.Timer,
    h.WaitTimedOut: h.Timer,
    h.EventReceived: h.Event,
    h.RunCancelled: h.Cancel,
    h.ChildResult: h.ChildEnded,
}


def _fingerprint(msg: h.Message) -> tuple[int, str, str, bytes, str]:
    return (msg.seq, msg.direction, msg.kind, msgspec.json.encode(msg.body), msg.time)


def check_append_only(
    run_id: str, earlier: Sequence[h.Message], later: Sequence[h.Message], tally: Tally
) -> list[Violation]:
    """I6: a later read of the history extends an earlier one, entry for entry."""
    tally(JOURNAL)
    for i, old in enumerate(earlier):
        new = later[i] if i < len(later) else None
        if new is None or _fingerprint(new) != _fingerprint(old):
            return [
                Violation(
                    JOURNAL,
                    "not-append-only",
                    run_id,
                    f"history is not append-only: message {i} was {_entry(old)} "
                    f"({len(earlier)} read earlier), now "
                    + (_entry(new) if new is not None else f"gone ({len(later)} messages)"),
                )
            ]
    return []


def check_journal(
    run_id: str, history: Sequence[h.Message], tally: Tally, *, budget: int | None = None
) -> list[Violation]:
    """I6: entries decode and fit the README's table; attempts count up; one terminal, last."""
    found: list[Violation] = []

    def bad(kind: str, evidence: str) -> None:
        found.append(Violation(JOURNAL, kind, run_id, evidence))

    by_seq = {m.seq: m for m in history}
    seqs = [m.seq for m in history]
    tally(JOURNAL)
    if seqs != sorted(set(seqs)):
        bad("out-of-order", f"history is not in strictly increasing stream order: {seqs}")
    journal = _journal(history)
    terminal_seen: h.Message | None = None
    attempts: dict[str, int] = {}
    closed: dict[str, h.Message] = {}  # step -> its final outcome
    pending_retry: dict[str, str] = {}  # step -> retry_at still owed a timer_set
    children: dict[str, h.Message] = {}  # step -> its child_started
    for msg in journal:
        body = msg.body
        tally(JOURNAL)
        if terminal_seen is not None:
            bad(
                "after-terminal",
                f"{_entry(msg)} follows the terminal entry {_entry(terminal_seen)}",
            )
        if isinstance(body, h.Invalid):
            bad("undecodable", f"journal entry #{msg.seq} does not decode: {body.reason}")
            continue
        for name in _TIME_FIELDS:
            value = getattr(body, name, None)
            if value is not None and not TIME.fullmatch(value):
                bad(
                    "bad-time",
                    f"{_entry(msg)}: {name} {value!r} is not RFC 3339 UTC with milliseconds",
                )
        step = getattr(body, "step", None)
        if step is not None and not step:
            bad("empty-step", f"{_entry(msg)} has an empty step id")
        want = _REFERS.get(type(body))
        input_seq = getattr(body, "input_seq", None)
        if want is not None and input_seq is not None:
            ref = by_seq.get(input_seq)
            if ref is None or ref.direction != "in" or not isinstance(ref.body, want):
                found_kind = ref.kind if ref is not None else "nothing"
                bad(
                    "bad-reference",
                    f"{_entry(msg)} names input #{input_seq}, which is {found_kind}",
                )
        if isinstance(body, h.StepCompleted | h.StepFailed):
            expected = attempts.get(body.step, 0) + 1
            if body.step in closed:
                bad(
                    "after-final-outcome",
                    f"{_entry(msg)} after the step's final outcome {_entry(closed[body.step])}",
                )
            elif body.attempt != expected:
                bad("attempt-gap", f"{_entry(msg)}: attempts go {expected - 1} -> {body.attempt}")
            attempts[body.step] = max(attempts.get(body.step, 0), body.attempt)
            if _final(body):
                closed.setdefault(body.step, msg)
            elif isinstance(body, h.StepFailed) and body.retry_at is not None:
                pending_retry[body.step] = body.retry_at
        elif isinstance(body, h.ChildStarted):
            if body.step in children:
                bad(
                    "second-child-started",
                    f"{_entry(msg)}: the step already started a child "
                    f"({_entry(children[body.step])})",
                )
            children.setdefault(body.step, msg)
        elif isinstance(body, OUTCOMES) and not isinstance(body, h.StepCompleted | h.StepFailed):
            if body.step in closed:
                bad(
                    "second-outcome",
                    f"{_entry(msg)}: a second outcome (first {_entry(closed[body.step])})",
                )
            closed.setdefault(body.step, msg)
        elif isinstance(body, h.TimerSet) and body.purpose == "retry":
            due = pending_retry.pop(body.step, None)
            if due is not None and due != body.fire_at:
                bad(
                    "retry-timer-mismatch",
                    f"{_entry(msg)}: fire_at {body.fire_at} but the failure said {due}",
                )
        elif isinstance(body, h.TimerSet) and body.purpose not in (
            "sleep",
            "wait_timeout",
            "child_timeout",
        ):
            bad("bad-purpose", f"{_entry(msg)}: unknown timer purpose {body.purpose!r}")
        elif isinstance(body, h.ValuesRecorded) and not body.values:
            bad("empty-values", f"{_entry(msg)} records no values")
        if isinstance(body, h.TERMINAL):
            terminal_seen = terminal_seen or msg
    if budget is not None:
        tally(JOURNAL)
        if len(journal) > budget:
            counts = Counter(m.kind for m in journal)
            bad(
                "over-budget",
                f"the journal holds {len(journal)} entries, more than any run of its job "
                f"can write ({budget}): {dict(counts.most_common(4))}",
            )
    return found


# -- I7 ------------------------------------------------------------------------


def check_children(
    run_id: str,
    history: Sequence[h.Message],
    executions: Sequence[Execution],
    tally: Tally,
    *,
    children: Mapping[str, Sequence[h.Message]],
    sent_to: Mapping[str, Sent] | None = None,
    settled: bool = True,
) -> list[Violation]:
    """I7: the children a run's journal names, seen from both sides.

    ``children`` holds the history of each child run the parent's ``child_started``
    entries name (missing: not read, or empty); ``sent_to`` what the harness sent to
    them (raw duplicate starts). Each child's own history is checked by ``check_run``.
    """
    found: list[Violation] = []

    def bad(kind: str, evidence: str) -> None:
        found.append(Violation(CHILDREN, kind, run_id, evidence))

    journal = _journal(history)
    terminal = _terminal(history)
    by_seq = {m.seq: m for m in history}
    told: Any = None  # what the parent's output says of its child
    if terminal is not None and isinstance(terminal.body, h.RunCompleted):
        output = terminal.body.output
        told = output.get("child") if isinstance(output, dict) else None
    for msg in journal:
        body = msg.body
        if not isinstance(body, h.ChildStarted) or body.error is not None:
            continue
        child_id = body.run_id
        child = children.get(child_id, ())
        starts = [m for m in child if isinstance(m.body, h.Start)]
        tally(CHILDREN)
        if not starts:
            bad(
                "child-not-started",
                f"{_entry(msg)} names child run {child_id!r}, whose inbox holds no start",
            )
            continue
        first = starts[0]
        want = h.Parent(run_id=run_id, step=body.step, detached=body.detached)
        if first.body.parent != want or first.body.job != body.job:
            bad(
                "wrong-child",
                f"{_entry(msg)} names run {child_id!r} of job {body.job!r}, whose start "
                f"#{first.seq} is job {first.body.job!r} with parent {first.body.parent}",
            )
        sent = (sent_to or {}).get(child_id) or Sent(child_id)
        extra = [m for m in starts[1:] if m.seq not in sent.starts]
        tally(CHILDREN)
        if extra and not sent.unsure_starts:
            listed = ", ".join(f"#{m.seq}" for m in extra)
            bad(
                "child-started-twice",
                f"child run {child_id!r} of {_entry(msg)} holds starts #{first.seq} and "
                f"{listed}: create-once stored a second one",
            )
        ended = _terminal(child)
        cancels = [m for m in child if isinstance(m.body, h.Cancel)]
        if body.detached:
            tally(CHILDREN)
            if cancels:
                bad(
                    "detached-child-cancelled",
                    f"detached child run {child_id!r} of {_entry(msg)} got a cancel "
                    f"#{cancels[0].seq}",
                )
            if isinstance(told, dict) and "run_id" in told:
                tally(CHILDREN)
                if told["run_id"] != child_id:
                    bad(
                        "output-mismatch",
                        f"the output names child run {told['run_id']!r}, the journal "
                        f"{child_id!r} ({_entry(msg)})",
                    )
            continue
        closing = next(
            (
                m
                for m in journal
                if isinstance(m.body, h.ChildResult | h.ChildTimedOut)
                and m.body.step == body.step
                and m.seq > msg.seq
            ),
            None,
        )
        if closing is not None and isinstance(closing.body, h.ChildResult):
            found += _result(run_id, closing, child_id, ended, by_seq, told, tally)
        # The parent goes no further than its invoke until the child's end is taken.
        stop = closing or terminal
        between = [m for m in journal if m.seq > msg.seq and (stop is None or m.seq < stop.seq)]
        past = [
            m
            for m in between
            if isinstance(m.body, h.ValuesRecorded)
            or getattr(m.body, "step", body.step) != body.step
        ]
        tally(CHILDREN)
        if past:
            listed = "; ".join(_entry(m) for m in past)
            bad(
                "went-past-invoke",
                f"while {_entry(msg)} waited"
                + (f" (until {_entry(closing)})" if closing is not None else "")
                + f", the journal went on: {listed}",
            )
        since = epoch(msg.time)
        until = epoch(stop.time) if stop is not None else None
        if since is not None:
            tally(CHILDREN)
            ran = [
                e
                for e in executions
                if e.begin > since + SLACK and (until is None or e.begin < until - SLACK)
            ]
            if ran:
                listed = "; ".join(f"{e.describe()} at {_clock(e.begin)}" for e in ran)
                bad("ran-during-invoke", f"while {_entry(msg)} waited: {listed}")
        # A parent that ended while waiting leaves its child cancelled (or ended).
        if terminal is not None and closing is None:
            tally(CHILDREN)
            if ended is None:
                if settled:
                    bad(
                        "orphaned-child",
                        f"the parent ended ({_entry(terminal)}) while {_entry(msg)} waited, "
                        f"and child run {child_id!r} never ended"
                        + (f" (cancel #{cancels[0].seq} stored)" if cancels else " (no cancel)"),
                    )
            else:
                parent_end, child_end = epoch(terminal.time) or 0.0, epoch(ended.time) or 0.0
                late = parent_end > 0 and child_end > 0
                if late and child_end > parent_end + SLACK and not cancels:
                    bad(
                        "child-not-cancelled",
                        f"the parent ended ({_entry(terminal)}) while {_entry(msg)} waited; "
                        f"child run {child_id!r} ended after it ({ended.kind} at "
                        f"{_clock(child_end)}) and was never sent a cancel",
                    )
    return found


def _result(
    run_id: str,
    result: h.Message,
    child_id: str,
    ended: h.Message | None,
    by_seq: Mapping[int, h.Message],
    told: Any,
    tally: Tally,
) -> list[Violation]:
    """A ``child_result`` (and the parent's output) against the child's terminal entry."""
    found = []

    def bad(kind: str, evidence: str) -> None:
        found.append(Violation(CHILDREN, kind, run_id, evidence))

    body = result.body
    tally(CHILDREN)
    if body.run_id != child_id:
        bad("result-mismatch", f"{_entry(result)} is for run {body.run_id!r}, not {child_id!r}")
    if ended is None:
        bad(
            "result-before-end",
            f"{_entry(result)} took status {body.status!r}, but child run {child_id!r} has "
            "no terminal entry",
        )
        return found
    status = STATUS[type(ended.body)]
    output = ended.body.output if isinstance(ended.body, h.RunCompleted) else None
    if body.status != status:
        bad(
            "result-mismatch",
            f"{_entry(result)} says {body.status!r}, the child's {_entry(ended)} {status!r}",
        )
    took, child_end = epoch(result.time), epoch(ended.time)
    if took is not None and child_end is not None and took < child_end - SLACK:
        bad(
            "result-before-end",
            f"{_entry(result)} came {child_end - took:.3f}s before the child's {_entry(ended)}",
        )
    notice = by_seq.get(body.input_seq)
    if notice is not None and isinstance(notice.body, h.ChildEnded):
        tally(CHILDREN)
        if (notice.body.run_id, notice.body.status) != (child_id, status) or (
            status == "completed" and notice.body.output != output
        ):
            bad(
                "result-mismatch",
                f"{_entry(result)} took child_ended #{notice.seq} ({notice.body.run_id!r}, "
                f"{notice.body.status!r}, output {notice.body.output!r}); the child's "
                f"{_entry(ended)} says {status!r}, output {output!r}",
            )
    if isinstance(told, dict) and "status" in told:
        tally(CHILDREN)
        if told.get("status") != status or (status == "completed" and told.get("output") != output):
            bad(
                "output-mismatch",
                f"the parent's output shows its child as {told!r}; the child's "
                f"{_entry(ended)} says {status!r}, output {output!r}",
            )
    return found


# -- all of them ---------------------------------------------------------------


def check_run(
    history: Sequence[h.Message],
    effects: Sequence[Execution],
    *,
    run_id: str,
    names: Names,
    sent: Sent | None = None,
    fired: Mapping[int, str] | None = None,
    earlier: Sequence[Sequence[h.Message]] = (),
    settled: bool = True,
    tally: Tally | None = None,
    children: Mapping[str, Sequence[h.Message]] | None = None,
    sent_to: Mapping[str, Sent] | None = None,
) -> list[Violation]:
    """Every invariant over one run: its history, its executions, what was sent to it.

    ``children``: the histories of the child runs its journal names (I7); each
    child is checked by a ``check_run`` of its own."""
    tally = tally if tally is not None else Tally()
    sent = sent if sent is not None else Sent(run_id)
    mine = [e for e in effects if e.run_id == run_id]
    checks: list[Callable[[], list[Violation]]] = [
        lambda: check_cancel_pause(run_id, history, mine, tally, settled=settled),
        lambda: check_reexecution(run_id, history, mine, tally, logs_effects=sent.logs_effects),
        lambda: check_values(run_id, history, mine, tally),
        lambda: check_timers(
            run_id, history, mine, tally, names=names, fired=fired or {}, sent=sent
        ),
        lambda: check_inputs(run_id, history, tally, sent=sent, settled=settled),
        lambda: check_journal(run_id, history, tally, budget=sent.budget),
        lambda: check_children(
            run_id,
            history,
            mine,
            tally,
            children=children or {},
            sent_to=sent_to,
            settled=settled,
        ),
    ]
    found = [v for check in checks for v in check()]
    for snapshot in earlier:
        found += check_append_only(run_id, snapshot, history, tally)
    return found
