"""Runner processes for ``make demo``: ``python -m jetlane runner --jobs jobs``, one per number.

A separate process, so that the demo can SIGKILL it. The demo keeps its last
log lines (JSON, on stderr) to show when something goes wrong, and knows it
is up from its ``runner started`` line. On Linux a runner also gets SIGTERM
when the demo dies, even by SIGKILL, so no runner outlives the demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections import deque
from collections.abc import Mapping
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class RunnerProcess:
    """One ``jetlane runner`` process; ``stop()`` and ``kill()`` wait for it to exit."""

    def __init__(self, number: int, process: asyncio.subprocess.Process) -> None:
        self.number = number
        self.process = process
        self.lines: deque[str] = deque(maxlen=200)
        self.how = ""  # how it ended: "SIGKILL" or "SIGTERM"
        self._ready: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls, number: int, url: str, *, env: Mapping[str, str], takeover: float
    ) -> RunnerProcess:
        args = [sys.executable, "-m", "jetlane", "runner", "--jobs", "jobs", "--nats", url]
        # ack wait: how long a dead runner's delivery stays with it before another runner
        # gets it (the lease TTL, set where the demo creates the streams, matches it).
        args += ["--ack-wait", f"{takeover:g}", "--drain-timeout", "5", "--concurrency", "16"]
        args += ["--metrics-port", "0", "--log-level", "info", "--log-json"]
        process = await asyncio.create_subprocess_exec(
            *args,
            cwd=ROOT,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # the demo alone signals it, Ctrl-C included
            preexec_fn=_die_with_parent,
        )
        return cls(number, process)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    async def ready(self) -> list[str]:
        """The jobs it serves, once it says ``runner started``; an error if it exits first."""
        return await self._ready

    async def kill(self) -> int:
        """SIGKILL: the crash the demo shows. Its exit code (-9)."""
        self.how = "SIGKILL"
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        return await self._exited()

    async def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (the runner drains), SIGKILL after ``timeout``. Its exit code."""
        if self.running:
            self.how = "SIGTERM"
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                return await asyncio.wait_for(self._exited(), timeout)
            except TimeoutError:
                self.how = "SIGKILL"
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
        return await self._exited()

    def kill_now(self) -> None:
        """Last resort when the demo cannot wait (a second Ctrl-C): SIGKILL, no wait."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    def last_lines(self, count: int = 20) -> str:
        return "\n".join(list(self.lines)[-count:])

    async def _exited(self) -> int:
        code = await self.process.wait()
        await self._reader
        return code

    async def _read(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        async for line in stream:  # read to the end: a full pipe would stall the runner
            self.lines.append(line.decode(errors="replace").rstrip())
            if not self._ready.done() and b'"runner started"' in line:
                with contextlib.suppress(msgspec.DecodeError):
                    jobs = msgspec.json.decode(line).get("jobs", [])
                    self._ready.set_result([str(j) for j in jobs])
        if not self._ready.done():
            code = await self.process.wait()
            self._ready.set_exception(
                RuntimeError(
                    f"runner {self.number} exited with {code} before it started; its log:\n"
                    + self.last_lines()
                )
            )
