"""An in-memory driver for the pure core: a list is the log, a fake clock the time.

It runs the runner's drive loop (``jetlane._drive.Driver``) with itself as
the store, without NATS: each ``Append`` goes to the log (its sequence is
the list position), ``Schedule``s to a dict that the fake clock fires as
``timer`` inputs. ``crash()`` throws the core away and replays the log into a
fresh one, as a new runner would.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from jetlane import wire as h
from jetlane._core.decisions import CancelChild, StartChild
from jetlane._core.definition import Job, define_job
from jetlane._core.errors import FenceLost
from jetlane._core.replay import (
    Append,
    Blocked,
    Decision,
    Execute,
    Finished,
    Outcome,
    Park,
    Replay,
    Schedule,
    Unschedule,
)
from jetlane._drive import Driver as DriveLoop
from jetlane.testing import MemoryStore, acknowledged, run_step

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
RUN = "r1"


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def entropy(n: int) -> bytes:
    """Deterministic per call count; a fresh core gets fresh bytes only if it asks again."""
    entropy.calls += 1  # type: ignore[attr-defined]
    seed = str(entropy.calls).encode()  # type: ignore[attr-defined]
    return hashlib.blake2b(seed, digest_size=32).digest()[:n]


entropy.calls = 0  # type: ignore[attr-defined]


class _Crash(Exception):
    """The runner process dies (in ``advance(crash_at_execute=n)``)."""


class Driver:
    """One run, its log and its schedules, advanced like a runner would."""

    def __init__(
        self,
        job: Job,
        input: Any = None,
        *,
        run_id: str = RUN,
        clock: FakeClock | None = None,
        max_payload: int | None = None,
        start: bool = True,
    ) -> None:
        self.job = job
        self.run_id = run_id
        self.clock = clock or FakeClock()
        self.max_payload = max_payload
        self.log: list[h.Message] = []
        self.schedules: dict[str, tuple[datetime, h.Timer]] = {}
        self.unscheduled: list[str] = []
        self.executed: list[tuple[str, int]] = []
        self.decisions: list[Decision] = []
        # (log length, clock, decision) at the end of each advance
        self.boundaries: list[tuple[int, datetime, Decision]] = []
        self.children: dict[str, h.Start] = {}  # child runs started (create-once)
        self.sent: list[tuple[str, h.Input]] = []  # inputs sent to other runs
        self._msg_ids: set[str] = set()
        self.replay = self._fresh()
        self._fed = 0
        if start:
            self.publish(h.Start(job=job.name, input=input))

    def _fresh(self) -> Replay:
        extra: dict[str, Any] = {}
        if self.max_payload is not None:
            extra["max_payload"] = self.max_payload
        return Replay(self.job, self.run_id, clock=self.clock, entropy=self._entropy, **extra)

    def _entropy(self, n: int) -> bytes:
        # By value position, so a core that re-reads an unrecorded value after a
        # crash gets what the lost core got: crashed and live journals compare equal.
        seed = f"{self.run_id}/{self.replay._value_pos}".encode()
        return hashlib.blake2b(seed, digest_size=32).digest()[:n]

    # -- the log ---------------------------------------------------------------

    def _add(self, direction: str, body: h.Body) -> int:
        seq = len(self.log) + 1
        kind = h.kind_of(body)
        self.log.append(h.Message(seq, self.run_id, direction, kind, body))
        return seq

    def publish(self, body: h.Input) -> int:
        """An input on ``.in`` (start, event, cancel, timer)."""
        return self._add("in", body)

    def event(self, type: str, payload: Any = None) -> int:
        return self.publish(h.Event(type=type, payload=payload))

    def cancel(self, reason: str | None = None) -> int:
        return self.publish(h.Cancel(reason=reason))

    @property
    def journal(self) -> list[h.Journal]:
        return [m.body for m in self.log if m.direction == "out"]

    @property
    def kinds(self) -> list[str]:
        return [m.kind for m in self.log if m.direction == "out"]

    def feed(self) -> bool:
        """Ingest what the core has not seen; True when that included an input."""
        fresh = False
        for msg in self.log[self._fed :]:
            fresh = fresh or msg.direction == "in"
            self.replay.ingest(msg)
        self._fed = len(self.log)
        return fresh

    # -- timers ----------------------------------------------------------------

    def fire(self, token: str) -> int:
        """The server fires a schedule now (whatever its ``fire_at``)."""
        _, body = self.schedules.pop(token)
        return self.publish(body)

    def fire_due(self) -> list[int]:
        due = sorted((at, token) for token, (at, _) in self.schedules.items() if at <= self.clock())
        return [self.fire(token) for _, token in due]

    def tick(self, seconds: float) -> list[int]:
        self.clock.advance(seconds)
        return self.fire_due()

    def next_fire_at(self) -> datetime | None:
        return min((at for at, _ in self.schedules.values()), default=None)

    # -- advancing -------------------------------------------------------------

    async def advance(self, *, crash_at_execute: int | None = None) -> Decision:
        """Bring the run to its next park (or end), as one runner session would: with
        the runner's own drive loop (``jetlane._drive.Driver``), this driver as its store.

        ``crash_at_execute=n`` runs the n-th step function of this session and
        then crashes before its outcome is written; a fresh core takes over.
        """
        self.feed()
        executes = 0

        async def execute(replay: Replay, ex: Execute) -> Outcome:
            nonlocal executes
            executes += 1
            outcome = await self.execute(ex)
            if executes == crash_at_execute:
                raise _Crash  # the outcome is lost with the process
            return outcome

        loop = DriveLoop(self, execute)
        while True:
            try:
                decision = await loop.settle(self.replay)
            except _Crash:
                await self.crash()
                continue
            break
        self._fed = len(self.log)
        self.decisions.append(decision)
        self.boundaries.append((len(self.log), self.clock.now, decision))
        if isinstance(decision, Park):
            for spec in decision.timers:
                if spec.rearm:
                    self.schedules[spec.token] = (spec.fire_at, spec.body)
        return decision

    # -- the Store the drive loop writes to (the list is the log) ----------------

    async def read(self, run_id: str, after: int = 0) -> list[h.Message]:
        return self.log[after:]

    async def read_inputs(self, run_id: str, after: int = 0) -> list[h.Message]:
        return [m for m in self.log[after:] if m.direction == "in"]

    async def append(self, run_id: str, body: h.Journal, expected: int) -> int:
        if expected != len(self.log):
            raise FenceLost(f"wrong last sequence: {len(self.log)}")
        return self._add("out", body)

    async def send_schedule(
        self, run_id: str, token: str, fire_at: datetime, body: h.Timer
    ) -> asyncio.Future[Any]:
        self.schedules[token] = (fire_at, body)
        return acknowledged()

    confirm = MemoryStore.confirm

    async def unschedule(self, run_id: str, token: str) -> None:
        self.unscheduled.append(token)
        if token == "*":
            self.schedules.clear()
        else:
            self.schedules.pop(token, None)

    async def create_once(self, run_id: str, body: h.Start) -> h.Start | None:
        found = self.children.get(run_id)
        if found is None:
            self.children[run_id] = body
        return found

    async def send_input(self, run_id: str, body: h.Input, msg_id: str) -> None:
        if msg_id not in self._msg_ids:  # deduplicated, as the stream does
            self._msg_ids.add(msg_id)
            self.sent.append((run_id, body))

    def child_ends(self, run_id: str, output: Any = None, *, status: str = "completed") -> int:
        """The child run ``run_id`` ended: its end lands on this run's inbox."""
        error = None if status == "completed" else h.ErrorInfo(type="Boom", message=status)
        ended = h.ChildEnded(run_id=run_id, status=status, output=output, error=error)
        return self.publish(ended)

    def flush(self, *, limit: int | None = None) -> None:
        """Write the outbox; ``limit`` stops after that many appends (a crash mid-write)."""
        outbox, self.replay.outbox = self.replay.outbox, []
        appends = 0
        for effect in outbox:
            if isinstance(effect, Append):
                if limit is not None and appends >= limit:
                    return
                appends += 1
                self.replay.appended(self._add("out", effect.body))
                self._fed = len(self.log)
            elif isinstance(effect, Schedule):
                self.schedules[effect.token] = (effect.fire_at, effect.body)
            elif isinstance(effect, Unschedule):
                self.unscheduled.append(effect.token)
                if effect.token == "*":
                    self.schedules.clear()
                else:
                    self.schedules.pop(effect.token, None)
            elif isinstance(effect, StartChild):
                self.children.setdefault(effect.entry.run_id, effect.start)
                if limit is not None and appends >= limit:
                    return  # stored, then the crash: child_started is not written
                appends += 1
                self.replay.recorded.apply(effect.entry)
                self.replay.appended(self._add("out", effect.entry))
                self._fed = len(self.log)
            elif isinstance(effect, CancelChild):
                self.sent.append((effect.run_id, h.Cancel(reason=effect.reason)))

    async def execute(self, ex: Execute) -> Outcome:
        self.executed.append((ex.step, ex.attempt))
        return await run_step(ex, self.clock(), 1.5)

    async def crash(self) -> None:
        """Lose the core (and its unwritten outbox); a fresh one replays the log."""
        await self.close()
        self.replay = self._fresh()
        self._fed = 0
        self.feed()

    async def close(self) -> None:
        await self.replay.aclose()

    async def run(
        self, *, on_park: Callable[[Driver, Park], None] | None = None, max_parks: int = 100
    ) -> Finished | Blocked:
        """Advance, letting time pass to the next timer at each park, until the run ends."""
        for _ in range(max_parks):
            decision = await self.advance()
            if isinstance(decision, Finished | Blocked):
                return decision
            assert isinstance(decision, Park)
            if on_park is not None:
                on_park(self, decision)
            if len(self.log) > self._fed:
                continue  # an input came while parked: advance again
            at = self.next_fire_at()
            assert at is not None, f"parked on {decision.step!r} with nothing scheduled"
            self.clock.now = max(self.clock.now, at)
            self.fire_due()
        raise AssertionError(f"run did not end within {max_parks} parks")


async def replay_fresh(driver: Driver) -> tuple[Decision, list[Any]]:
    """A fresh core fed the driver's whole log: its decision and what it would append."""
    other = Replay(driver.job, driver.run_id, clock=driver.clock, entropy=entropy)
    for msg in driver.log:
        other.ingest(msg)
    decision = await other.next(None)
    appends = [e.body for e in other.outbox if isinstance(e, Append)]
    await other.aclose()
    return decision, appends


def job_of(handler: Any, *, name: str = "t", timeout: float | None = None) -> Job:
    return define_job(name=name, handler=handler, timeout=timeout, register=False)


def plain(value: Any) -> Any:
    """A recorded value (``msgspec.Raw`` when just written) as plain JSON data."""
    return msgspec.json.decode(value) if isinstance(value, msgspec.Raw) else value


def of(driver: Driver, kind: type[Any]) -> list[Any]:
    return [e for e in driver.journal if isinstance(e, kind)]
