"""Runner processes for fault tests (real processes, real signals)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from jetlane import Names

ROOT = Path(__file__).resolve().parent.parent


class RunnerProcess:
    """A ``tests.procs.runner_main`` process serving ``jobs``; its output goes to a file."""

    jobs = "tests.procs.jobs"

    def __init__(
        self,
        url: str,
        names: Names,
        exec_log: Path,
        *,
        tag: str | None = None,
        flags: Mapping[str, float | str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        args = [sys.executable, "-m", "tests.procs.runner_main", "--jobs", self.jobs, "--url", url]
        args += ["--prefix", names.prefix, "--stream", names.stream]
        for key, value in (flags or {}).items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        env = {**os.environ, "JETLANE_TEST_EXEC_LOG": str(exec_log), **(env or {})}
        self.log_path = exec_log.with_name(f"runner-{tag or id(self)}.log")
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_kib(self) -> int:
        """Resident set size of the process, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS for pid {self.pid}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def executions(exec_log: Path) -> list[str]:
    return exec_log.read_text().split() if exec_log.exists() else []
