"""Runner processes for fault tests (real processes, real signals)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from jetlane import Names

ROOT = Path(__file__).resolve().parent.parent


class RunnerProcess:
    def __init__(self, url: str, names: Names, exec_log: Path, **flags: float) -> None:
        args = [
            sys.executable,
            "-m",
            "tests.procs.runner_main",
            "--url",
            url,
            "--prefix",
            names.prefix,
            "--stream",
            names.stream,
        ]
        for key, value in flags.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        env = {**os.environ, "JETLANE_TEST_EXEC_LOG": str(exec_log)}
        self.log_path = exec_log.with_suffix(f".runner{id(self)}.log")
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )

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
