"""What a run's history records: the state replay reads, and lookups over it (pure, sync).

``Replay`` drives the handler; everything it asks of the history ("what did
step X record last?", "which event of type T is next?", "was a cancel
stored?") is answered here from the messages ingested so far, with no
asyncio, no I/O and no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import history as h
from .determinism import atom_of

UNRECORDABLE = "UnrecordableResult"  # the error type of a run_blocked on a step's result
# Entries that end an atom's wait (a step failed with a retry_at does not: it parks).
PROCEEDS = (
    h.StepCompleted,
    h.StepFailed,
    h.SleepCompleted,
    h.EventReceived,
    h.WaitTimedOut,
    h.ChildResult,
    h.ChildTimedOut,
)


def proceeds(body: Any) -> bool:
    """Whether journal entry ``body`` lets its step's branch go past the atom."""
    if isinstance(body, h.StepFailed):
        return body.retry_at is None  # with a retry_at, the branch parks for the retry
    if isinstance(body, h.ChildStarted):
        return body.detached or body.error is not None  # start_run returns; a refusal raises
    return isinstance(body, PROCEEDS)


@dataclass
class StepRecord:
    """One step's journal entries, in order, and the atom that made them."""

    atom: str
    entries: list[Any] = field(default_factory=list)


class Recorded:
    """A run's history as ingested: steps in call order, values, inputs, controls."""

    def __init__(self) -> None:
        self.last_seq = 0  # the last sequence seen, inputs and journal together
        self.out_seq = 0  # the last journal sequence seen
        self.inputs = 0  # input messages ingested so far
        self.start: h.Start | None = None
        self.terminal: h.RunCompleted | h.RunFailed | h.RunCancelled | None = None
        self.last_entry: Any = None
        self.order: list[str] = []  # step ids in the order the journal first names them
        self.steps: dict[str, StepRecord] = {}
        self.values: list[Any] = []
        self.events: list[tuple[int, h.Event]] = []
        self.event_at: dict[int, h.Event] = {}
        self.consumed: set[int] = set()
        self.timers: dict[str, int] = {}
        self.cancel: tuple[int, h.Cancel] | None = None
        self.paused = False
        self.resumed_at = 0  # the sequence of the last resume input
        # step -> where a step whose result could not be recorded was held (its effect
        # happened): it runs again only on a resume input stored after that
        self.held: dict[str, int] = {}
        # child run id -> the sequence of its first child_ended input
        self.child_ends: dict[str, int] = {}
        self.child_end_at: dict[int, h.ChildEnded] = {}
        self.has_timers = False  # any timer_set seen or emitted: a finish purges timers
        # step -> the sequence of the entry, read from the log, that let the step's branch
        # go past it (a result, a final failure, a sleep's or wait's end): parallel
        # branches are handed these in log order on replay, as the live run was
        self.proceeds: dict[str, int] = {}
        self.wait_started_at: dict[str, int] = {}  # step -> its wait_started, as read

    # -- feeding ----------------------------------------------------------------

    def ingest(self, msg: h.Message) -> None:
        """Apply one message of the run's history (in stream order; duplicates ignored)."""
        if msg.direction == "out":
            if msg.seq <= self.out_seq:
                return
            self.out_seq = msg.seq
            self.apply(msg.body)
            body = msg.body
            if proceeds(body):
                self.proceeds[body.step] = msg.seq
            elif isinstance(body, h.WaitStarted):
                self.wait_started_at[body.step] = msg.seq
        elif msg.seq > self.last_seq:
            self.inputs += 1
            body = msg.body
            if isinstance(body, h.Start):
                if self.start is None:
                    self.start = body
            elif isinstance(body, h.Event):
                self.events.append((msg.seq, body))
                self.event_at[msg.seq] = body
            elif isinstance(body, h.Timer):
                self.timers.setdefault(body.timer, msg.seq)
            elif isinstance(body, h.ChildEnded):
                if body.run_id not in self.child_ends:
                    self.child_ends[body.run_id] = msg.seq
                    self.child_end_at[msg.seq] = body
            elif isinstance(body, h.Cancel) and self.cancel is None:
                self.cancel = (msg.seq, body)
            elif isinstance(body, h.Pause | h.Resume):
                self.paused = isinstance(body, h.Pause)
                if isinstance(body, h.Resume):
                    self.resumed_at = msg.seq
        self.last_seq = max(self.last_seq, msg.seq)

    def appended(self, seq: int) -> None:
        """The next journal entry was written at ``seq``."""
        self.out_seq = seq
        self.last_seq = max(self.last_seq, seq)
        last = self.last_entry
        if isinstance(last, h.RunBlocked) and last.error.type == UNRECORDABLE:
            self.held[last.step] = seq  # where it landed: resumes stored before do not count

    def apply(self, body: Any) -> None:
        """Take in one journal entry (read back, or just decided)."""
        self.last_entry = body
        atom = atom_of(body)
        if atom is not None:
            step = self.steps.get(body.step)
            if step is None:
                step = self.steps[body.step] = StepRecord(atom)
                self.order.append(body.step)
            step.entries.append(body)
            if isinstance(body, h.TimerSet):
                self.has_timers = True
            if isinstance(body, h.EventReceived | h.WaitTimedOut) and body.input_seq is not None:
                self.consumed.add(body.input_seq)
        elif isinstance(body, h.ValuesRecorded):
            self.values.extend(body.values)
        elif isinstance(body, h.RunCompleted | h.RunFailed | h.RunCancelled):
            self.terminal = body
        elif isinstance(body, h.RunBlocked) and body.error.type == UNRECORDABLE:
            # read back: out_seq is this entry's; just decided: nothing stored after it yet
            self.held[body.step] = max(self.out_seq, self.last_seq)

    # -- lookups ----------------------------------------------------------------

    def entries(self, step: str) -> list[Any]:
        record = self.steps.get(step)
        return record.entries if record is not None else []

    def last_outcome(self, step: str) -> h.StepCompleted | h.StepFailed | None:
        for entry in reversed(self.entries(step)):
            if isinstance(entry, h.StepCompleted | h.StepFailed):
                return entry
        return None

    def next_event(self, types: tuple[str, ...]) -> int | None:
        """The sequence of the earliest event of one of ``types`` no wait has taken."""
        return next((s for s, e in self.events if e.type in types and s not in self.consumed), None)

    def holds(self, step: str) -> bool:
        """Whether ``step`` is held on an unrecordable result with no resume since."""
        at = self.held.get(step)
        return at is not None and self.resumed_at <= at

    def held_at_frontier(self) -> str | None:
        """A step held with no outcome recorded (so not in ``order``): the next atom."""
        return next((s for s in self.held if s not in self.steps and self.holds(s)), None)

    def fired(self, token: str) -> bool:
        """Whether a timer input for ``token`` is in the inbox (it wakes; time decides)."""
        return token in self.timers
