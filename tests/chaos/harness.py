"""Runner processes serving tests.chaos.jobs, and what the tests read back from them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from jetlane import Names
from jetlane import _history as h

ROOT = Path(__file__).resolve().parent.parent.parent


class ChaosRunner:
    """One ``tests.chaos.runner_main`` process; its output goes to a file of its own."""

    def __init__(self, url: str, names: Names, exec_log: Path, tag: str, **flags: float) -> None:
        args = [sys.executable, "-m", "tests.chaos.runner_main", "--url", url]
        args += ["--prefix", names.prefix, "--stream", names.stream]
        for key, value in flags.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        env = {**os.environ, "JETLANE_TEST_EXEC_LOG": str(exec_log)}
        self.log_path = exec_log.with_name(f"runner-{tag}.log")
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def rss_kib(self) -> int:
        """Resident set size of the process, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS for pid {self.pid}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


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
