"""The nemesis: a seeded schedule of infrastructure faults against real processes.

Faults: a runner SIGKILLed (and replaced), a runner SIGSTOPped past its lease
and then SIGCONTed (a paused process that wakes up believing it still holds
its runs), the nats-server SIGKILLed and restarted on the same port and store
directory, and the runners' shared consumer deleted and recreated (which
redelivers every input in the stream). The faults that travel as messages
(forged timers, raw and duplicate starts, early events, cancels, pauses) are
the workload's (``workload.py``): they belong to a run's timeline.

Which fault comes next and the pauses between them are drawn from the seeded
``random.Random``; wall-clock timing still varies from run to run, so a seed
replays the schedule, not every interleaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from jetlane import Log, Names
from jetlane.embedded import EmbeddedNats

from .harness import ChaosRunner

FAULTS = {
    "runner_sigkill": 4,
    "runner_sigstop": 2,
    "server_sigkill": 1,
    "consumer_recreated": 1,
}
# Least seconds between two faults of a kind: a recreated consumer redelivers every
# input ever stored, which costs more the longer the run; a server restart stalls all.
COOLDOWN = {"server_sigkill": 8.0, "consumer_recreated": 30.0}


class Pool:
    """Runner processes serving ``tests.chaos.jobs``; dead ones are replaced."""

    def __init__(
        self, url: str, names: Names, exec_log: Path, size: int, flags: dict[str, float]
    ) -> None:
        self.url, self.names, self.exec_log, self.flags = url, names, exec_log, flags
        self.spawned = 0
        self.stopped: set[int] = set()  # pids under SIGSTOP
        self.runners = [self._spawn() for _ in range(size)]

    def _spawn(self) -> ChaosRunner:
        self.spawned += 1
        return ChaosRunner(
            self.url, self.names, self.exec_log, tag=str(self.spawned), flags=self.flags
        )

    def replace(self, index: int) -> None:
        old = self.runners[index]
        self.cont(old.pid)
        old.kill()
        self.runners[index] = self._spawn()

    def respawn_dead(self) -> int:
        """Replace runners that exited (one started while the server was down cannot connect)."""
        dead = [i for i, r in enumerate(self.runners) if not r.alive()]
        for i in dead:
            self.runners[i].kill()  # reaps it
            self.runners[i] = self._spawn()
        return len(dead)

    def stop(self, pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        self.stopped.add(pid)

    def cont(self, pid: int) -> None:
        if pid in self.stopped:
            self.stopped.discard(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def cont_all(self) -> None:
        for pid in list(self.stopped):
            self.cont(pid)

    async def shutdown(self, timeout: float = 30.0) -> None:
        self.cont_all()
        for runner in self.runners:
            runner.terminate()
        for runner in self.runners:
            try:
                await asyncio.to_thread(runner.wait, timeout)
            except Exception:
                runner.kill()

    def output(self) -> str:
        return "\n".join(r.output()[-2000:] for r in self.runners)


class Nemesis:
    """Injects one fault at a time, at random intervals, until told to stop; then heals."""

    def __init__(
        self,
        rng: random.Random,
        server: EmbeddedNats,
        pool: Pool,
        log: Log,
        *,
        lease_ttl: float,
        faults: Counter[str] | None = None,
        pause: tuple[float, float] = (0.4, 1.5),
    ) -> None:
        self.rng, self.server, self.pool, self.log = rng, server, pool, log
        self.lease_ttl = lease_ttl
        self.pause = pause
        self.faults: Counter[str] = faults if faults is not None else Counter()
        self._wakers: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        last: dict[str, float] = {}
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), self.rng.uniform(*self.pause))
                    break
                except TimeoutError:
                    pass
                self.faults["runner_respawned"] += self.pool.respawn_dead()
                now = loop.time()
                ready = {
                    kind: weight
                    for kind, weight in FAULTS.items()
                    if now - last.get(kind, -1e9) >= COOLDOWN.get(kind, 0.0)
                }
                kind = self.rng.choices(list(ready), list(ready.values()))[0]
                last[kind] = now
                await getattr(self, kind)()
                self.faults[kind] += 1
        finally:
            await self.heal()

    async def runner_sigkill(self) -> None:
        self.pool.replace(self.rng.randrange(len(self.pool.runners)))

    async def runner_sigstop(self) -> None:
        running = [r for r in self.pool.runners if r.pid not in self.pool.stopped]
        if len(running) <= 1:  # keep one runner awake: the others' runs must move
            return await self.runner_sigkill()
        runner = self.rng.choice(running)
        held = self.rng.uniform(self.lease_ttl + 0.5, self.lease_ttl + 3.0)
        self.pool.stop(runner.pid)

        async def wake() -> None:
            await asyncio.sleep(held)
            self.pool.cont(runner.pid)

        task = asyncio.create_task(wake())
        self._wakers.add(task)
        task.add_done_callback(self._wakers.discard)

    async def server_sigkill(self) -> None:
        self.server.kill()
        await asyncio.sleep(self.rng.uniform(0.2, 2.0))
        self.server.start()

    async def consumer_recreated(self) -> None:
        js, stream, name = self.log.js, self.log.names.stream, self.log.names.consumer
        try:
            config = (await js.consumer_info(stream, name)).config
            await js.delete_consumer(stream, name)
        except Exception:
            return  # the server is restarting, or the consumer is not there yet
        await asyncio.sleep(self.rng.uniform(0.0, 1.0))
        await _retry(lambda: js.add_consumer(stream, config))

    async def heal(self) -> None:
        """Every process awake, the server up, the consumer present."""
        for task in list(self._wakers):
            task.cancel()
        self.pool.cont_all()
        if self.server.process is None or self.server.process.poll() is not None:
            self.server.start()
        self.pool.respawn_dead()


async def _retry(op: Callable[[], Awaitable[object]], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await op()
            return
        except Exception:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.25)
