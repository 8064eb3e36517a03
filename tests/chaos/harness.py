"""Runner processes serving tests.chaos.jobs, and what the tests read back from them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from jetlane import wire as h

from ..processes import RunnerProcess


class ChaosRunner(RunnerProcess):
    """A runner process serving the chaos jobs."""

    jobs = "tests.chaos.jobs"


def executions(exec_log: Path) -> Counter[str]:
    """How many times each step key was executed."""
    return Counter(exec_log.read_text().split() if exec_log.exists() else [])


def final_outcomes(history: list[h.Message]) -> Counter[str]:
    """How many *final* outcomes each step has in the journal (must be 1 each)."""
    count: Counter[str] = Counter()
    for msg in history:
        body = msg.body
        if (
            isinstance(body, h.StepCompleted)
            or (isinstance(body, h.StepFailed) and body.retry_at is None)
            or isinstance(body, h.SleepCompleted | h.EventReceived | h.WaitTimedOut)
        ):
            count[body.step] += 1
    return count


def attempts(history: list[h.Message]) -> Counter[tuple[str, int]]:
    """How many journal entries record each (step, attempt) of a ``step.do``."""
    count: Counter[tuple[str, int]] = Counter()
    for msg in history:
        if isinstance(msg.body, h.StepCompleted | h.StepFailed):
            count[(msg.body.step, msg.body.attempt)] += 1
    return count
