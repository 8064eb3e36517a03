"""Non-determinism: how replay tells that a job's code no longer matches its history.

Matching is positional: the k-th atom the handler calls must be the k-th step
the journal records, with the same step id and the same atom. ``Diverged``
unwinds the handler when it does not; the run is then blocked (not failed)
with a message that names the recorded step, what the code asked for, and
what to do about it.
"""

from __future__ import annotations

from typing import Any

from . import history as h


class Diverged(BaseException):
    """Engine control flow: unwinds the handler when replay diverges."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step
        self.message = message


class Held(BaseException):
    """Engine control flow: unwinds the handler when the run must block at ``step`` on a
    bug that is not a divergence (a step result that cannot be recorded)."""

    def __init__(self, step: str, info: h.ErrorInfo) -> None:
        super().__init__(info.message)
        self.step = step
        self.info = info


def atom_of(body: Any) -> str | None:
    if isinstance(body, h.StepCompleted | h.StepFailed):
        return "do"
    if isinstance(body, h.TimerSet):
        return {
            "retry": "do",
            "sleep": "sleep",
            "wait_timeout": "wait",
            "child_timeout": "invoke",
        }.get(body.purpose)
    if isinstance(body, h.SleepCompleted):
        return "sleep"
    if isinstance(body, h.WaitStarted | h.EventReceived | h.WaitTimedOut):
        return "wait" if body.types is None else "wait_any"
    if isinstance(body, h.ChildStarted):
        return "start_run" if body.detached else "invoke"
    if isinstance(body, h.ChildResult | h.ChildTimedOut):
        return "invoke"
    return None


ATOM_CALL = {
    "do": "step.do",
    "sleep": "step.sleep",
    "wait": "step.wait_for_event",
    "wait_any": "step.wait_for_any",
    "invoke": "step.invoke",
    "start_run": "step.start_run",
}


ADVICE = (
    ". The handler did not do what it did before. Usual causes: code outside steps that "
    "is not deterministic (datetime.now(), uuid4(), random, iteration over a set or over "
    "os.listdir, a value read from a plugin or the network outside step.do: use ctx.now(), "
    "ctx.uuid(), ctx.random() or a step), or the job's code changed under a running run "
    "(deploy code that issues the recorded steps in the same order: put new logic behind "
    "a new job name or a new step after the recorded ones, or cancel the run). The run is "
    "blocked, not failed, and resumes once compatible code serves it."
)


def base_name(step: str) -> str:
    return step.rsplit("#", 1)[0] if "#" in step else step
