"""Test your jobs without a server: an in-memory run log, a virtual clock, and replay checks.

``Environment`` runs jobs with the same replay core and the same drive loop
as a runner, over an in-memory store instead of NATS, with a clock that
moves only when told to (``advance``) or when ``result`` waits for a timer::

    from jetlane.testing import Environment

    async def test_approval_times_out() -> None:
        async with Environment(jobs=[approval]) as env:
            run = await env.start("approval", {"amount": 10})
            await env.advance("25h")  # timers due in that span fire, in order
            assert (await env.status(run.id)).status == "failed"

Every wake-up replays the run from its history (no cached handler), so code
that is not deterministic (``datetime.now()`` in a step name, iteration over
a set) fails here the way it would after a runner restart.

``replay(job, history)`` replays a history exported with
``jetlane history RUN --json > run.jsonl`` against the current code and
raises ``NonDeterminismError`` when the code no longer matches it: run it in
CI on histories of runs that are in flight, before deploying.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from ._core import history as h
from ._core.context import Plugins
from ._core.definition import Job, registry
from ._core.durations import Duration, format_time, parse_time, to_seconds
from ._core.errors import (
    ConfigError,
    DecodeError,
    FenceLost,
    JetlaneError,
    NonDeterminismError,
    RunAlreadyExists,
    RunFailedError,
    RunNotFound,
)
from ._core.recorded import UNRECORDABLE
from ._core.replay import Blocked, Execute, Finished, Outcome, Park, Replay
from ._core.status import RunStatus, summarize
from ._drive import Driver
from ._executor import StepExecutor, attempt, call_on_loop

__all__ = [
    "Environment",
    "MemoryStore",
    "TestRun",
    "VirtualClock",
    "load_history",
    "replay",
    "replay_async",
    "run_step",
]

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


class VirtualClock:
    """A UTC clock that moves only when told to."""

    def __init__(self, start: datetime = EPOCH) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def acknowledged() -> asyncio.Future[Any]:
    """An acknowledgement that has already come (an in-memory write cannot fail)."""
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


class MemoryStore:
    """The run log in memory: what ``Driver`` needs of a store, plus the timers."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.runs: dict[str, list[h.Message]] = {}
        self.schedules: dict[tuple[str, str], tuple[datetime, h.Timer]] = {}
        self._seq = 0
        self._msg_ids: set[str] = set()
        # Runs that a drive gave an input (a child's start, a child's end, a cancel):
        # the Environment advances them next, as a delivery would.
        self.woken: list[str] = []

    def add(self, run_id: str, direction: str, body: h.Body) -> int:
        """Store a message as the stream would: encoded and decoded (no live objects)."""
        kind = h.kind_of(body)
        stored = h.decode(kind, h.encode(body), direction=direction)
        self._seq += 1
        message = h.Message(
            self._seq, run_id, direction, kind, stored, time=format_time(self.clock())
        )
        self.runs.setdefault(run_id, []).append(message)
        return self._seq

    def last(self, run_id: str) -> int:
        messages = self.runs.get(run_id)
        return messages[-1].seq if messages else 0

    async def read(self, run_id: str, after: int = 0) -> list[h.Message]:
        return [m for m in self.runs.get(run_id, []) if m.seq > after]

    async def read_inputs(self, run_id: str, after: int = 0) -> list[h.Message]:
        return [m for m in await self.read(run_id, after) if m.direction == "in"]

    async def append(self, run_id: str, body: h.Journal, expected: int) -> int:
        last = self.last(run_id)
        if last != expected:
            raise FenceLost(f"wrong last sequence: {last}")
        return self.add(run_id, "out", body)

    async def send_schedule(
        self, run_id: str, token: str, fire_at: datetime, body: h.Timer
    ) -> asyncio.Future[Any]:
        self.schedules[(run_id, token)] = (fire_at, body)
        return acknowledged()

    async def confirm(self, sent: asyncio.Future[Any]) -> None:
        await sent

    async def unschedule(self, run_id: str, token: str) -> None:
        for key in [k for k in self.schedules if k[0] == run_id and token in ("*", k[1])]:
            del self.schedules[key]

    async def create_once(self, run_id: str, body: h.Start) -> h.Start | None:
        found = next(
            (m.body for m in self.runs.get(run_id, []) if isinstance(m.body, h.Start)), None
        )
        if found is None:
            self.add(run_id, "in", body)
            self.woken.append(run_id)
        return found

    async def send_input(self, run_id: str, body: h.Input, msg_id: str) -> None:
        if msg_id in self._msg_ids:
            return  # deduplicated, as the stream does within its window
        self._msg_ids.add(msg_id)
        self.add(run_id, "in", body)
        self.woken.append(run_id)

    def next_due(self, run_id: str | None = None) -> tuple[datetime, str, str] | None:
        """The earliest armed timer (of ``run_id``, or of any run): (fire_at, run, token)."""
        armed = [
            (at, run, token)
            for (run, token), (at, _) in self.schedules.items()
            if run_id is None or run == run_id
        ]
        return min(armed, default=None)


@dataclass(frozen=True)
class TestRun:
    """A run started in an ``Environment``."""

    __test__ = False  # not a pytest test class

    run_id: str
    env: Environment

    @property
    def id(self) -> str:
        """The same as ``run_id``."""
        return self.run_id

    async def result(self, *, within: Duration = "3650d") -> Any:
        return await self.env.result(self.run_id, within=within)

    async def status(self) -> RunStatus:
        return await self.env.status(self.run_id)

    async def send_event(self, type: str, payload: Any = None) -> None:
        await self.env.send_event(self.run_id, type, payload)


class Environment:
    """Runs ``jobs`` over an in-memory store with a virtual clock (no nats-server)."""

    def __init__(
        self,
        jobs: Iterable[Job | Callable[..., Any]] | Mapping[str, Job],
        *,
        plugins: Mapping[str, Any] | Plugins | None = None,
        start: datetime = EPOCH,
        seed: int = 0,
    ) -> None:
        listed = jobs.values() if isinstance(jobs, Mapping) else jobs
        self.jobs = {job.name: job for job in map(_as_job, listed)}
        self.plugins = plugins if isinstance(plugins, Plugins) else Plugins(dict(plugins or {}))
        self.clock = VirtualClock(start)
        self.store = MemoryStore(self.clock)
        self._random = random.Random(seed)
        # Steps run as on a runner (sync functions in threads, timeouts as StepTimeout),
        # stamped with the virtual clock.
        self._steps = StepExecutor(4, clock=self.clock)
        self._driver = Driver(self.store, self._execute)

    async def __aenter__(self) -> Environment:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._steps.close()

    # -- what a client does -------------------------------------------------------

    async def start(self, job: str, input: Any = None, *, run_id: str | None = None) -> TestRun:
        """Start a run (create-once) and advance it to its first park or end."""
        definition = self.jobs.get(job)
        if definition is None:
            known = ", ".join(sorted(self.jobs)) or "none"
            raise ConfigError(f"no job {job!r} in this Environment (jobs: {known})")
        definition.validate_input(input)
        run_id = h.check_run_id(run_id) if run_id is not None else self._uuid()
        if any(isinstance(m.body, h.Start) for m in self.store.runs.get(run_id, [])):
            raise RunAlreadyExists(run_id)
        self.store.add(run_id, "in", h.Start(job=job, input=input))
        await self._wake(run_id)
        return TestRun(run_id, self)

    async def send_event(self, run_id: str, type: str, payload: Any = None) -> None:
        self._existing(run_id)
        self.store.add(run_id, "in", h.Event(type=type, payload=payload))
        await self._wake(run_id)

    async def cancel(self, run_id: str, reason: str | None = None) -> bool:
        return await self._control(run_id, h.Cancel(reason=reason))

    async def pause(self, run_id: str, reason: str | None = None) -> bool:
        return await self._control(run_id, h.Pause(reason=reason))

    async def resume(self, run_id: str) -> bool:
        return await self._control(run_id, h.Resume())

    async def status(self, run_id: str) -> RunStatus:
        status = summarize(run_id, self._existing(run_id))
        assert status is not None
        return status

    async def history(self, run_id: str) -> list[h.Message]:
        return list(self._existing(run_id))

    async def result(self, run_id: str, *, within: Duration = "3650d") -> Any:
        """The run's output once it ends, moving the clock to each of its timers in turn
        (retry delays and sleeps pass at once); ``RunFailedError`` if it failed, was
        cancelled or is blocked (``.status`` says which; a bug in handler code blocks)."""
        limit = self.clock() + timedelta(seconds=to_seconds(within, what="within"))
        while True:
            status = await self.status(run_id)
            if status.done or status.status == "blocked":
                break  # blocked: a bug in the code, which no clock moves past
            due = self.store.next_due(run_id)
            if due is None and status.waiting_for is not None and status.waiting_for[:4] == "run ":
                due = self.store.next_due()  # it waits on a child run: the child's timers
            if due is None or due[0] > limit:
                raise JetlaneError(
                    f"run {run_id!r} is {status.status}"
                    + (f" (waiting for {status.waiting_for!r})" if status.waiting_for else "")
                    + " and no timer of it is due"
                    + (" within the limit" if due is not None else "")
                    + ": send it what it waits for, or advance the clock"
                )
            await self._advance_to(due[0])
        if status.status == "completed":
            return status.output
        error = status.error or h.ErrorInfo(type="Error", message=status.status)
        raise RunFailedError(run_id, status.status, error.type, error.message)

    async def advance(self, duration: Duration) -> None:
        """Move the clock; timers that come due on the way fire in order, each run
        advancing as it would."""
        await self._advance_to(self.clock() + timedelta(seconds=to_seconds(duration)))

    # -- inside ---------------------------------------------------------------------

    async def _advance_to(self, target: datetime) -> None:
        while (due := self.store.next_due()) is not None and due[0] <= target:
            fire_at, run_id, token = due
            self.clock.now = max(self.clock.now, fire_at)
            _, body = self.store.schedules.pop((run_id, token))
            self.store.add(run_id, "in", body)  # what the server's schedule does
            await self._wake(run_id)
        self.clock.now = max(self.clock.now, target)

    def _existing(self, run_id: str) -> list[h.Message]:
        messages = self.store.runs.get(run_id, [])
        if not any(isinstance(m.body, h.Start) for m in messages):
            raise RunNotFound(run_id)
        return messages

    async def _control(self, run_id: str, body: h.Cancel | h.Pause | h.Resume) -> bool:
        if (await self.status(run_id)).done:
            return False
        self.store.add(run_id, "in", body)
        await self._wake(run_id)
        return True

    async def _wake(self, run_id: str) -> None:
        """Advance ``run_id``, then every run a session gave an input (child runs and
        their parents), in order, until none is left: as deliveries would."""
        self.store.woken.append(run_id)
        while self.store.woken:
            await self._session(self.store.woken.pop(0))

    async def _session(self, run_id: str) -> None:
        """One runner session: replay the run from its log and drive it to a park or end."""
        history = self.store.runs.get(run_id, [])
        start = next((m.body for m in history if isinstance(m.body, h.Start)), None)
        if start is None or start.job not in self.jobs:
            return
        replay = Replay(
            self.jobs[start.job],
            run_id,
            clock=self.clock,
            entropy=self._random.randbytes,
            plugins=self.plugins,
        )
        try:
            for message in history:
                replay.ingest(message)
            decision = await self._driver.settle(replay)
            if isinstance(decision, Park):
                for spec in decision.timers:
                    if spec.rearm:
                        self.store.schedules[(run_id, spec.token)] = (spec.fire_at, spec.body)
        finally:
            await replay.aclose()
        ended = decision.entry if isinstance(decision, Finished) else None
        timed_out = isinstance(ended, h.RunFailed) and ended.error.type == "FunctionTimeout"
        if isinstance(ended, h.RunCompleted | h.RunFailed) and not timed_out:
            # A run that ended in one go was never replayed: replay it now, so that code
            # that is not deterministic fails here as it would after a runner restart.
            await replay_async(self.jobs[start.job], self.store.runs[run_id], plugins=self.plugins)

    async def _execute(self, replay: Replay, ex: Execute) -> Outcome:
        return await self._steps.run(ex)

    def _uuid(self) -> str:
        return uuid.UUID(bytes=self._random.randbytes(16), version=4).hex


async def run_step(ex: Execute, started: datetime, duration_ms: float = 0.0) -> Outcome:
    """Run one step attempt on the loop with a fixed start and duration (journals that
    tests compare stay equal); errors classified as a runner records them."""
    result, error = await attempt(ex, call_on_loop)
    return Outcome(
        started_at=started, duration_ms=duration_ms, result=result, error=error, step=ex.step
    )


def _as_job(item: Job | Callable[..., Any]) -> Job:
    """A ``Job``, or the handler an ``@job`` decorated (found in the registry)."""
    if isinstance(item, Job):
        return item
    for job in registry().values():
        if job.handler is item:
            return job
    raise ConfigError(
        f"{item!r} is neither a Job nor a handler registered with @job; "
        "pass define_job(name=..., handler=...) for an unregistered handler"
    )


# -- replaying recorded histories ---------------------------------------------------


def load_history(source: str | Path | Iterable[h.Message | Mapping[str, Any]]) -> list[h.Message]:
    """A history from a ``jetlane history RUN --json`` file, or from messages or dicts."""
    items: Iterable[h.Message | Mapping[str, Any]]
    if isinstance(source, str | Path):
        lines = Path(source).read_text().splitlines()
        items = [msgspec.json.decode(line) for line in lines if line.strip()]
    else:
        items = source
    history = []
    for item in items:
        if isinstance(item, h.Message):
            history.append(item)
            continue
        kind, direction = str(item["kind"]), str(item["direction"])
        try:
            body = h.decode(kind, msgspec.json.encode(item["body"]), direction=direction)
        except DecodeError:
            continue  # stored but never an entry (dead-lettered input): replay skips it too
        history.append(
            h.Message(
                int(item["seq"]), str(item["run_id"]), direction, kind, body, str(item["time"])
            )
        )
    return history


async def replay_async(
    job: Job | Callable[..., Any],
    history: str | Path | Iterable[h.Message | Mapping[str, Any]],
    *,
    plugins: Mapping[str, Any] | Plugins | None = None,
) -> None:
    """``replay``, for async tests."""
    job = _as_job(job)
    if plugins is None:
        given: Any = _AnyPlugins()
    else:
        given = plugins if isinstance(plugins, Plugins) else Plugins(dict(plugins))
    messages = load_history(history)
    if not messages:
        raise ConfigError("the history is empty")
    # Run the handler through the whole record: leave out how the run ended (and the
    # cancel that ended it) and any pause (a paused run would not start the handler),
    # so that the code is checked to the end.
    left_out = h.RunCompleted | h.RunFailed | h.RunCancelled | h.Cancel | h.Pause | h.Resume
    kept = [m for m in messages if not isinstance(m.body, left_out)]
    last = max((parse_time(m.time) for m in messages if m.time), default=EPOCH)
    core = Replay(job, messages[0].run_id, clock=lambda: last, plugins=given)
    try:
        for message in kept:
            core.ingest(message)
        decision = await core.next(None)
        recorded = [m.body for m in messages if isinstance(m.body, h.TERMINAL)]
        if isinstance(decision, Blocked) and not _same_stop(decision, recorded):
            raise NonDeterminismError(
                f"run {core.run_id!r} of job {job.name!r} would block on this code at step "
                f"{decision.step!r}: {decision.error.message}"
            )
        if isinstance(decision, Finished) and recorded:
            ended, now = type(recorded[0]).__name__, type(decision.entry).__name__
            if ended != now and not isinstance(recorded[0], h.RunCancelled):
                raise NonDeterminismError(
                    f"run {core.run_id!r} of job {job.name!r} ended {ended} in its history, "
                    f"but this code ends it {now}"
                )
    finally:
        await core.aclose()


def _same_stop(decision: Blocked, recorded: list[Any]) -> bool:
    """Whether the code stops where the history did, not on a mismatch.

    A step held on a result that could not be recorded is where the run waits for a
    resume: the code reached it through the history. A history that ended failed on
    an exception handler code raised (recorded before such a bug blocked a run) ends
    as this code would, which now blocks on it.
    """
    if decision.error.type == UNRECORDABLE:
        return True
    ended = recorded[0] if recorded else None
    return (
        isinstance(ended, h.RunFailed)
        and decision.error.type != "NonDeterminismError"
        and ended.error.type == decision.error.type
    )


class _Anything:
    """Stands in for a plugin during a replay: step functions never run there, so the
    handler only needs something to build its lambdas from."""

    def __getattr__(self, name: str) -> _Anything:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> _Anything:
        return self


class _AnyPlugins:
    def __getattr__(self, name: str) -> _Anything:
        return _Anything()

    def __getitem__(self, name: str) -> _Anything:
        return _Anything()


def replay(
    job: Job | Callable[..., Any],
    history: str | Path | Iterable[h.Message | Mapping[str, Any]],
    *,
    plugins: Mapping[str, Any] | Plugins | None = None,
) -> None:
    """Replay a recorded history against the current code of ``job`` (a ``Job`` or an
    ``@job`` handler). Step functions never run; ``ctx.plugins`` gives stand-ins unless
    ``plugins`` are given (for handlers that call plugins outside steps).

    Raises ``NonDeterminismError`` (naming the step, with what the history
    records and what the code asks for) when a run with this history would
    block on this code. Use ``replay_async`` inside an event loop.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(replay_async(job, history, plugins=plugins))
        return
    raise ConfigError("replay() runs its own event loop: use `await replay_async(...)` here")
