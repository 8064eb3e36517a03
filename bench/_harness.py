"""What every workload shares: the server, fresh names, runners, a journal watcher, RSS."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg

from jetlane import ConnectOptions, Job, Log, Names, Runner, RunnerConfig

from ._stats import Figure, Goal

ROOT = Path(__file__).resolve().parent.parent
_ids = itertools.count()


@dataclass(frozen=True)
class Settings:
    quick: bool = False
    full: bool = False
    rounds: int = 5
    sync_always: bool = False
    only: frozenset[str] = frozenset()
    profile: bool = False
    results: Path = ROOT / "bench" / "results"

    def pick(self, quick: int, default: int, full: int | None = None) -> int:
        """A size: ``quick`` under --quick, ``full`` under --full, else ``default``."""
        if self.quick:
            return quick
        if self.full and full is not None:
            return full
        return default


@dataclass
class Bench:
    """One run of the suite: its server, settings and the figures gathered so far."""

    url: str
    settings: Settings
    figures: list[Figure] = field(default_factory=list)
    profiles: dict[str, Any] = field(default_factory=dict)
    spy: dict[str, Path] = field(default_factory=dict)  # py-spy collapsed stacks by label
    notes: list[str] = field(default_factory=list)
    tag: str = ""

    def names(self, what: str) -> Names:
        """A stream and subject tree of this workload's own."""
        n = next(_ids)
        return Names(prefix=f"b{os.getpid()}{what}{n}", stream=f"B{os.getpid()}{what}{n}")

    @property
    def options(self) -> ConnectOptions:
        return ConnectOptions(url=self.url)

    async def open_log(self, names: Names) -> Log:
        return await Log.open(self.options, names)

    def figure(
        self,
        workload: str,
        name: str,
        unit: str,
        *,
        floor: str | None = None,
        goal: Goal | None = None,
        note: str = "",
    ) -> Figure:
        fig = Figure(workload, name, unit, floor=floor, goal=goal, note=note)
        self.figures.append(fig)
        return fig

    def floor_value(self, key: str) -> float | None:
        for fig in self.figures:
            if fig.key == key and fig.samples:
                return fig.median
        return None

    def note(self, text: str) -> None:
        print(f"  note: {text}", flush=True)
        self.notes.append(text)

    @contextlib.contextmanager
    def profiled(self, label: str, when: bool = True) -> Iterator[None]:
        """Profile the block with pyinstrument (under --profile); all of this process's work."""
        if not (self.settings.profile and when):
            yield
            return
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001, async_mode="disabled")
        profiler.start()
        try:
            yield
        finally:
            profiler.stop()
            self.profiles[label] = profiler


@asynccontextmanager
async def runner(
    bench: Bench, names: Names, jobs: Mapping[str, Job], **config: Any
) -> AsyncIterator[Runner]:
    """An in-process runner on its own connection, stopped (drained) on exit."""
    log = await bench.open_log(names)
    r = Runner(log, jobs, config=RunnerConfig(**config))
    task = asyncio.create_task(r.run())
    try:
        await asyncio.wait_for(r.ready.wait(), 15)
        yield r
    finally:
        r.stop()
        await asyncio.wait_for(task, 60)
        await log.close()


class RunnerProcess:
    """A runner in a process of its own (``python -m bench.runner_proc``)."""

    def __init__(self, bench: Bench, names: Names, label: str = "", **config: Any) -> None:
        args = [
            sys.executable,
            "-m",
            "bench.runner_proc",
            bench.url,
            names.prefix,
            names.stream,
            *(f"{k}={v}" for k, v in config.items()),
        ]
        self.names = names
        self.process = asyncio.create_subprocess_exec(
            *args, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE
        )
        self.proc: asyncio.subprocess.Process | None = None
        self.bench = bench
        self.label = label
        self.spy: asyncio.subprocess.Process | None = None

    async def start(self) -> RunnerProcess:
        self.proc = await self.process
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if line.strip() != b"ready":
            raise RuntimeError(f"runner process did not start: {line!r}")
        if self.bench.settings.profile and self.label:
            # py-spy samples the runner process (--profile); collapsed stacks, summarized later
            out = Path(tempfile.mkdtemp(prefix="bench-spy-")) / f"{self.label}.txt"
            spy = Path(sys.executable).parent / "py-spy"
            self.spy = await asyncio.create_subprocess_exec(
                str(spy), "record", "--pid", str(self.proc.pid), "--format", "raw",
                "--rate", "250", "--output", str(out), "--nonblocking",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            self.bench.spy[self.label] = out
        return self

    async def stop(self) -> None:
        if self.spy is not None and self.spy.returncode is None:
            self.spy.send_signal(signal.SIGINT)
            await asyncio.wait_for(self.spy.wait(), 30)
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 60)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def rss_mb(pid: int | None = None) -> float:
    """Resident set size of a process (this one by default), in MB, from /proc."""
    path = f"/proc/{pid or 'self'}/status"
    with open(path) as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Watcher:
    """Counts journal entries as runners append them (a core subscription on every ``.out``).

    Runner appends pass through core NATS, so this sees them without a
    consumer per run; it counts entries by kind and keeps, per run, the wall
    time and body of the first entry of each kind.
    """

    def __init__(self, bench: Bench, names: Names, kinds: set[str]) -> None:
        self.bench = bench
        self.names = names
        self.kinds = kinds
        self.seen: dict[str, dict[str, float]] = {k: {} for k in kinds}
        self.counts: dict[str, int] = dict.fromkeys(kinds, 0)
        self.bodies: dict[str, dict[str, bytes]] = {k: {} for k in kinds}
        self._nc: Any = None
        self._waiters: list[tuple[str, int, asyncio.Future[None]]] = []

    async def __aenter__(self) -> Watcher:
        self._nc = await nats.connect(self.bench.url)
        await self._nc.subscribe(f"{self.names.prefix}.run.*.out", cb=self._on_msg)
        await self._nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._nc.close()

    async def _on_msg(self, msg: Msg) -> None:
        kind = (msg.headers or {}).get("Jetlane-Kind", "")
        if kind not in self.kinds:
            return
        run_id = msg.subject.split(".")[2]
        self.seen[kind].setdefault(run_id, time.time())
        self.bodies[kind].setdefault(run_id, msg.data)
        self.counts[kind] += 1
        for waiter in self._waiters:
            if waiter[0] == kind and self.counts[kind] >= waiter[1] and not waiter[2].done():
                waiter[2].set_result(None)

    async def wait(self, kind: str, count: int, timeout: float) -> bool:
        """Wait until ``count`` entries of ``kind`` have been appended; False on timeout."""
        if self.counts[kind] >= count:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (kind, count, future)
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters.remove(waiter)


async def gather_limited(n: int, limit: int, make: Callable[[int], Any]) -> list[Any]:
    """Run ``make(i)`` for i in range(n) with at most ``limit`` in flight."""
    sem = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with sem:
            return await make(i)

    return list(await asyncio.gather(*(one(i) for i in range(n))))
