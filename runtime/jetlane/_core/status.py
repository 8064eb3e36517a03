"""A run's status, summarised from its history (pure; no handler needed)."""

from __future__ import annotations

import typing
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

import msgspec

from . import history as h
from .errors import ConfigError

Status = Literal[
    "queued",
    "running",
    "sleeping",
    "waiting",
    "retrying",
    "completed",
    "failed",
    "cancelled",
    "blocked",
]
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
STATUSES: tuple[str, ...] = typing.get_args(Status)
STATUS_FILTERS: tuple[str, ...] = (*STATUSES, "paused")
"""What ``runs list --status`` and ``GET /runs?status=`` take: a status, or ``paused``
(paused runs, whatever their status)."""


def check_status_filter(value: str) -> str:
    """``value`` when it is one of ``STATUS_FILTERS``; ``ConfigError`` naming them otherwise."""
    if value in STATUS_FILTERS:
        return value
    from .definition import did_you_mean

    raise ConfigError(
        f"status {value!r} is not one of {', '.join(STATUS_FILTERS)}"
        f"{did_you_mean(value, STATUS_FILTERS)}"
    )


class Child(msgspec.Struct, kw_only=True):
    """A child run, as its parent's history tells: ``status`` is ``running`` until the
    parent has taken its end (``completed``, ``failed``, ``cancelled``), ``timed_out``
    when the parent gave up on it, ``detached`` for a ``step.start_run`` child (its
    parent does not follow it: ask for its own status), ``rejected`` when its run id
    was taken."""

    run_id: str
    step: str
    job: str
    status: str


class RunStatus(msgspec.Struct, kw_only=True):
    """What a run is doing, as its log says."""

    run_id: str
    job: str
    status: Status
    step: str | None = None
    attempt: int | None = None
    waiting_for: str | None = None
    until: str | None = None
    output: Any = None
    error: h.ErrorInfo | None = None
    created_at: str = ""
    updated_at: str = ""
    history_length: int = 0
    detail: str | None = None
    paused: bool = False
    build: str | None = None  # the build the run is pinned to (rolling upgrades)
    paused_at: str | None = None  # when the pause in force was stored
    paused_by: str | None = None  # who sent it, as it says (None: not said)
    paused_reason: str | None = None
    events_after_end: int = 0  # events stored after the run ended (forced): nothing acts on them
    parent: h.Parent | None = None  # a child run: the run and step that started it
    children: list[Child] = msgspec.field(default_factory=list)  # runs its steps started

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def due_since(self, now: datetime) -> str | None:
        """``until`` when that time has passed: the timer or timeout is due, not pending."""
        if self.until is None or self.done:
            return None
        try:
            until = datetime.fromisoformat(self.until.replace("Z", "+00:00"))
        except ValueError:
            return None
        return self.until if until <= now else None

    def explain_due(self, now: datetime) -> str | None:
        """Why a due timer has not acted yet, or None when nothing is due."""
        due = self.due_since(now)
        if due is None:
            return None
        what = "timeout" if self.status == "waiting" else "timer"
        if self.paused:
            return f"{what} due since {due}; it acts when the run is resumed"
        return f"{what} due since {due}; overdue: no runner has acted on it yet"


def summarize(run_id: str, messages: Iterable[h.Message]) -> RunStatus | None:
    """The status of the run whose history is ``messages``; None when it has no start."""
    state: RunStatus | None = None
    count = 0
    for msg in messages:
        count += 1
        body = msg.body
        if state is None:
            if isinstance(body, h.Start):
                state = RunStatus(
                    run_id=run_id,
                    job=body.job,
                    status="queued",
                    created_at=msg.time,
                    parent=body.parent,
                )
            continue
        update(state, msg)
    if state is not None:
        state.history_length = count
    return state


def update(state: RunStatus, msg: h.Message) -> None:
    """Advance ``state`` by one more message of the run's history (what ``summarize`` does)."""
    state.updated_at = msg.time or state.updated_at
    state.history_length += 1
    if isinstance(msg.body, h.Pause):
        state.paused, state.paused_at = True, msg.time or None
        state.paused_by, state.paused_reason = msg.body.by, msg.body.reason
    elif isinstance(msg.body, h.Resume):
        state.paused = False
        state.paused_at = state.paused_by = state.paused_reason = None
    elif isinstance(msg.body, h.Event) and state.status in TERMINAL_STATUSES:
        state.events_after_end += 1
    elif isinstance(msg.body, h.Pin | h.RunStarted):
        state.build = msg.body.build
    if msg.direction == "out" and state.status not in TERMINAL_STATUSES:
        _apply(state, msg.body)


def _apply(state: RunStatus, body: Any) -> None:
    if isinstance(body, h.Invalid | h.RunStarted):
        return  # not an entry (undecodable, or forged through a schedule); or a pin
    if isinstance(body, h.ValuesRecorded | h.TimerSet):
        # A timer_set follows the entry that explains it (step_failed, wait_started)
        # or is a sleep; only a sleep changes what the run is doing.
        if isinstance(body, h.TimerSet) and body.purpose == "sleep":
            state.step, state.status, state.attempt = body.step, "sleeping", None
            state.waiting_for, state.until, state.error = "timer", body.fire_at, None
        return
    if isinstance(body, h.ChildStarted):
        status = "rejected" if body.error else "detached" if body.detached else "running"
        state.children.append(
            Child(run_id=body.run_id, step=body.step, job=body.job, status=status)
        )
    elif isinstance(body, h.ChildResult | h.ChildTimedOut):
        for child in state.children:
            if child.run_id == body.run_id and child.step == body.step:
                child.status = body.status if isinstance(body, h.ChildResult) else "timed_out"
    step = getattr(body, "step", None)
    if step is not None:
        if step != state.step:
            state.attempt = None  # an attempt belongs to the step.do it counts
        state.step = step
    state.waiting_for = state.until = state.error = None
    state.status = "running"
    if isinstance(body, h.StepCompleted):
        state.attempt = body.attempt
    elif isinstance(body, h.StepFailed):
        state.attempt, state.error = body.attempt, body.error
        if body.retry_at is not None:
            state.status, state.waiting_for, state.until = "retrying", "timer", body.retry_at
    elif isinstance(body, h.WaitStarted):
        # step.wait_for_any: the types it waits for, "|"-separated
        waiting_for = "|".join(body.types) if body.types else body.type
        state.status, state.waiting_for, state.until = "waiting", waiting_for, body.timeout_at
    elif isinstance(body, h.ChildStarted) and not body.detached and body.error is None:
        state.status, state.waiting_for = "waiting", f"run {body.run_id}"
        state.until = body.timeout_at
    elif isinstance(body, h.RunBlocked):
        state.status, state.error = "blocked", body.error
    elif isinstance(body, h.RunCompleted):
        state.status, state.output = "completed", body.output
    elif isinstance(body, h.RunFailed):
        state.status, state.error = "failed", body.error
    elif isinstance(body, h.RunCancelled):
        state.status = "cancelled"
        state.error = h.ErrorInfo(type="Cancelled", message=body.reason or "cancelled")
