"""The runner: pulls "advance run X" deliveries and drives runs with the replay core.

Design note. A delivery only says *advance run X*; advancing is idempotent
(bring the run to its next park given everything in its log), so duplicate
and redelivered inputs are harmless. Within a process a run has one session
at a time: deliveries for a run already in a session are attached to it;
those that arrive after its last read of the log are dispatched again when it
ends. Across processes a run has one holder: the session takes
the run's lease first and naks (with a delay, never drops) when another
runner holds it. The fence on the journal stays the last line of defence.

A run that parks stays in an LRU cache with its handler suspended, so the
next delivery continues it after reading only the log's tail; any journal
entry in that tail that this runner did not write means another runner
advanced the run, and the cached state is thrown away for a full replay.

Every append is fenced on the last sequence of the whole run (inbox and
journal), so a successful append proves no input came since the runner last
read the log: a cancel or pause stored by anyone, delivered to any runner, is
seen before the next step starts. A refused append is followed by a read of
the tail: new inputs are taken in and the append retried; a journal entry
written by another runner ends the session.

A run that no runner here can advance (its job is not served, or its code is
blocked) is marked *waiting* and its delivery acked, so it holds no consumer
capacity; runners that serve the job look for waiting runs when they start
(new code), and hear about new ones on a wake subject.

Builds (rolling upgrades). A runner with a build id pins each run it starts
to its build (a ``run_started`` entry) and advances only runs pinned to it
(or to no build): a run pinned to another build is never replayed here. It
is marked waiting for that build, whose runners are asked on their build's
wake subject to take it; when none answers (the build is drained), it waits
for an operator's ``pin`` input, or is adopted (pinned to our build, by a
``pin`` input) when the runner is told to. A runner without a build id
serves every run, as before; its path has no extra step.

Timers end sleeps, retries and wait timeouts by time: a fired schedule (or an
in-process timer of the runner that parked the run) only wakes the run, and
the core compares the clock with the ``fire_at`` its journal records. A timer
message on the inbox, forged or orphaned by a crash, can wake a run early but
never ends anything early.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from . import _parked, _waiting
from ._answers import serve_answers
from ._core import history as h
from ._core.bounds import error_info, where
from ._core.context import Plugins
from ._core.definition import Job, registry
from ._core.durations import format_time
from ._core.errors import (
    DecodeError,
    FenceLost,
    JetlaneError,
)
from ._core.replay import (
    DEFAULT_MAX_PAYLOAD,
    Blocked,
    Execute,
    Finished,
    Outcome,
    Park,
    Replay,
)
from ._core.status import RunStatus, summarize, update
from ._drive import Driver, Handback, Outdated
from ._executor import StepExecutor
from ._index import record
from ._metrics import RunnerMetrics
from ._nats.log import Log
from ._nats.pull import Delivery

logger = structlog.get_logger("jetlane.runner")


@dataclass(frozen=True)
class RunnerConfig:
    """Tuning knobs; every one has a ``jetlane runner`` flag and env var."""

    concurrency: int = 100
    ack_wait: float = 30.0
    drain_timeout: float = 30.0
    fast_timer_window: float = 300.0
    cache_size: int = 2000
    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_ack_pending: int = 20000
    index: bool = True
    # How often runners look again for waiting runs of their jobs (besides at start).
    wake_interval: float = 300.0
    # The code version this runner runs: pins the runs it starts, serves only those
    # (None: serve every run, pinned or not).
    build_id: str | None = None
    # Take over runs pinned to a build that no live runner serves (with a pin input).
    adopt_orphans: bool = False


LOGGED_CHARS = 2000  # of an error message in a log line (the journal keeps 8 KiB)


@dataclass
class _Session:
    run_id: str
    deliveries: list[Delivery] = field(default_factory=list)
    handled: int = 0
    lease: int | None = None
    # Serialises lease renewals with the release, so a renewal in flight can
    # never land after the release and leave a lease nobody holds.
    lease_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    redeliver_in: float | None = None  # parked early on a fired timer: come back then
    waiting: bool = False  # woken from the waiting marks: clear the mark when it moves
    lease_unsure: bool = False  # a renewal got no answer: it may have been stored
    retries: int = 0  # a session with no delivery re-wakes itself this many times


class Runner:
    """Serves ``jobs`` from the pool's shared consumer until ``stop()``."""

    # Bodies kept in modules of their own (``Runner`` methods all the same).
    _unserved = _waiting._unserved
    _ours = _waiting._ours
    _foreign = _waiting._foreign
    _wake_waiting = _waiting._wake_waiting
    _may_take = _waiting._may_take
    _remember = _parked._remember
    _evict = _parked._evict
    _cancel_fast = _parked._cancel_fast
    _arm = _parked._arm
    _fire_fast = _parked._fire_fast

    def __init__(
        self,
        log_: Log,
        jobs: Mapping[str, Job] | None = None,
        *,
        plugins: Mapping[str, Any] | Plugins | None = None,
        config: RunnerConfig | None = None,
        runner_id: str | None = None,
        metrics: RunnerMetrics | None = None,
    ) -> None:
        self.log = log_
        self.jobs = dict(registry() if jobs is None else jobs)
        self.plugins = plugins if isinstance(plugins, Plugins) else Plugins(dict(plugins or {}))
        self.config = config or RunnerConfig()
        if self.config.build_id is not None:
            h.check_build_id(self.config.build_id)
        self.id = runner_id or f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self._sessions: dict[str, _Session] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cache: OrderedDict[str, Replay] = OrderedDict()
        self._fast: dict[str, asyncio.TimerHandle] = {}
        self._summaries: dict[str, RunStatus] = {}
        self.metrics = metrics or RunnerMetrics()
        self.metrics.serve(self.jobs)
        self._stopping = asyncio.Event()
        self._slot = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self._steps = StepExecutor(max(self.config.concurrency, 4))
        self._driver = Driver(
            log_,
            self._execute,
            on_message=self._summarize,
            on_append=self._appended,
            stopping=self._stopping.is_set,
        )
        self.ready = asyncio.Event()

    def stop(self) -> None:
        """Stop pulling and drain (``run`` returns once in-flight sessions end)."""
        self._stopping.set()
        self._slot.set()

    async def run(self) -> None:
        """Pull and advance runs until ``stop()``; then drain."""
        config = self.config

        async def consumer() -> None:
            await self.log.runner_consumer(
                ack_wait=config.ack_wait, max_ack_pending=config.max_ack_pending
            )

        await consumer()
        puller = self.log.puller(self._dispatch, consumer)
        await puller.start()
        validators = await serve_answers(
            self.log,
            self.jobs,
            lambda run_id: self._wake(run_id, waiting=True),
            self.config.build_id,
        )
        heartbeat = asyncio.create_task(self._heartbeat())
        self.ready.set()
        waker = asyncio.create_task(self._wake_waiting())
        logger.info(
            "runner started", runner=self.id, jobs=sorted(self.jobs), build=self.config.build_id
        )
        try:
            while not self._stopping.is_set():
                free = config.concurrency - len(self._tasks)
                if free <= 0:
                    self._slot.clear()
                    await self._slot.wait()
                    continue
                try:
                    await puller.pull(min(free, 256))
                except Exception as exc:  # a reconnect in progress: the next pull retries
                    logger.warning("pull failed", error=str(exc))
                    await asyncio.sleep(0.25)
        finally:
            self.ready.clear()
            waker.cancel()
            for stop in validators:
                await stop()
            await self._drain()
            heartbeat.cancel()
            await puller.stop()
            for handle in self._fast.values():
                handle.cancel()
            self._fast.clear()
            cached = list(self._cache.values())
            self._cache.clear()
            for replay in cached:
                replay.close()
            if cached:
                # Let the suspended handlers unwind (their branches too) before the loop
                # may close: a task left pending is reported as destroyed.
                # Bounded: handler code that swallows the cancel must not hold the stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        await asyncio.gather(*(r.aclose() for r in cached), return_exceptions=True)
            self._steps.close()
            logger.info("runner stopped", runner=self.id)

    async def _drain(self) -> None:
        if not self._tasks:
            return
        logger.info("draining", sessions=len(self._tasks), timeout=self.config.drain_timeout)
        tasks = list(self._tasks.values())
        _, pending = await asyncio.wait(tasks, timeout=self.config.drain_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5.0)

    # -- deliveries -----------------------------------------------------------

    async def _dispatch(self, msg: Delivery) -> None:
        if self._stopping.is_set():
            await msg.hand_over()  # pulled while stopping: another runner takes it
            return
        names = self.log.names
        parsed = names.parse(msg.subject)
        run_id = parsed[0] if parsed else ""
        try:
            if parsed is None or not h.RUN_ID.fullmatch(run_id):
                raise DecodeError(f"subject {msg.subject!r} does not name a valid run id")
            kind = h.decode(msg.headers.get(h.KIND_HEADER), msg.data, direction="in")
        except DecodeError as exc:
            await self._dead_letter(msg, run_id, str(exc))
            return
        if isinstance(kind, h.Timer):
            self.metrics.timer_received(msg.headers)
        self._wake(run_id, msg)

    def _wake(self, run_id: str, msg: Delivery | None = None, *, waiting: bool = False) -> bool:
        """Advance ``run_id``: join its session here, or start one (False: stopping)."""
        session = self._sessions.get(run_id)
        if session is not None:
            if msg is not None:
                session.deliveries.append(msg)
            session.waiting = session.waiting or waiting
            return True
        if self._stopping.is_set():
            return False
        session = _Session(run_id, [msg] if msg is not None else [], waiting=waiting)
        self._sessions[run_id] = session
        self._tasks[run_id] = asyncio.create_task(self._session(session))
        return True

    async def _dead_letter(self, msg: Delivery, run_id: str, reason: str) -> None:
        logger.warning("dead-lettered input", run_id=run_id, seq=msg.seq, reason=reason)
        self.metrics.dead_letters.inc()
        try:
            await self.log.dead_letter(run_id, msg.seq, msg.subject, reason, msg.data)
        except JetlaneError as exc:
            logger.error("dead-letter write failed; will retry", seq=msg.seq, error=str(exc))
            await msg.retry_later(1.0)
            return
        await msg.reject()

    async def _session(self, session: _Session) -> None:
        run_id = session.run_id
        self.metrics.sessions_started.inc()
        outcome = "retry"
        try:
            outcome = await self._advance(session)
        except FenceLost:
            self.metrics.fence_conflicts.inc()
            logger.info("fence lost; another runner advanced the run", run_id=run_id)
        except (asyncio.CancelledError, Handback):
            outcome = "handback"
        except (TimeoutError, JetlaneError, OSError) as exc:
            logger.warning("advance failed; will retry", run_id=run_id, error=str(exc))
        except Exception:  # a bug: logged with its traceback, the delivery retried
            logger.exception("advance crashed; will retry", run_id=run_id)
        finally:
            summary = self._summaries.get(run_id)
            if summary is not None and self.config.index:
                summary.updated_at = format_time(datetime.now(UTC))
                try:
                    await self.log.put_index(run_id, record(summary))
                except JetlaneError as exc:  # derived data: the next session or a rebuild
                    logger.info("run index write failed", run_id=run_id, error=str(exc))
            if run_id not in self._cache:
                self._evict(run_id)  # only a parked run stays cached
            await self._release(session)
            self._sessions.pop(run_id, None)
            self._tasks.pop(run_id, None)
            self._slot.set()
            # Deliveries that arrived after the session last read the log were not
            # seen by it: they start a session of their own.
            late = session.deliveries[session.handled :] if outcome in ("parked", "done") else []
            del session.deliveries[len(session.deliveries) - len(late) :]
            await self._settle(session, "done" if outcome == "parked" else outcome)
            for msg in late:
                if not self._stopping.is_set():
                    self._wake(run_id, msg)
                else:
                    await msg.hand_over()
            if outcome == "retry" and not session.deliveries and session.retries < 8:
                # Woken by a timer or a wake-up, with no delivery to redeliver it: try
                # again here (the fence and the lease keep that safe).
                self._later(0.05 * 2**session.retries, run_id, session.retries + 1)

    def _later(self, delay: float, run_id: str, retries: int) -> None:
        def again() -> None:
            if run_id not in self._sessions and not self._stopping.is_set():
                self._wake(run_id)
                woken = self._sessions.get(run_id)
                if woken is not None:
                    woken.retries = retries

        asyncio.get_running_loop().call_later(delay, again)

    async def _release(self, session: _Session) -> None:
        async with session.lease_lock:
            if session.lease is None:
                return
            lease, session.lease = session.lease, None
            try:
                if session.lease_unsure:
                    # A renewal whose ack was lost may be stored after our last known
                    # sequence: release the newest lease if it is still ours.
                    now = await self.log.lease(session.run_id)
                    if now is not None and now[0] == self.id:
                        lease = max(lease, now[1])
                await self.log.release(session.run_id, lease)
            except JetlaneError as exc:  # it expires after the TTL anyway
                logger.info("lease release failed", run_id=session.run_id, error=str(exc))

    async def _settle(self, session: _Session, outcome: str) -> None:
        for msg in session.deliveries:
            if outcome == "done" and session.redeliver_in is None:
                await msg.ack()
            elif outcome == "done":
                await msg.retry_later(session.redeliver_in or 0.0)
            elif outcome == "handback":
                await msg.hand_back()
            else:
                await msg.retry_later(min(0.05 * 2 ** min(msg.attempt, 8), 5.0))

    async def _advance(self, session: _Session) -> str:
        run_id = session.run_id
        lease = await self.log.acquire(run_id, self.id)
        async with session.lease_lock:
            session.lease = lease
        if lease is None:
            return "retry"  # another runner holds the run; it reads the log before parking
        for _ in range(5):
            try:
                return await self._advance_held(session)
            except Outdated as exc:
                # A decision was overturned by an input that came while it was being
                # written: replay from the log, which now holds that input.
                logger.info("decision overturned; replaying", run_id=run_id, entry=str(exc))
        return "retry"

    async def _advance_held(self, session: _Session) -> str:
        run_id = session.run_id
        replay = self._cache.pop(run_id, None)
        if replay is not None:
            replay = await self._catch_up(replay)
            session.handled = len(session.deliveries)
        if replay is None:
            # Always read: a start may be redelivered (a re-created consumer, a raw
            # second start) for a run whose journal already records steps.
            history = await self.log.read(run_id)
            session.handled = len(session.deliveries)  # later ones: the log after this read
            start = next((m.body for m in history if isinstance(m.body, h.Start)), None)
            if start is None:
                # An input stored before its run's start (anyone may publish on .in):
                # it stays in the log, and the run's first session reads it.
                logger.info("input for a run not started yet; kept for its start", run_id=run_id)
                return "done"
            job = self.jobs.get(start.job)
            if job is None:
                await self._unserved(run_id, start.job, history)
                return "done"
            if self.config.build_id is not None and not await self._ours(run_id, job, history):
                return "done"
            t0 = time.perf_counter()
            replay = Replay(job, run_id, plugins=self.plugins, max_payload=self.config.max_payload)
            for msg_ in history:
                replay.ingest(msg_)
            self.metrics.history_length.observe(len(history))
            self._summaries[run_id] = summarize(run_id, history) or RunStatus(
                run_id=run_id, job=start.job, status="queued"
            )
            if self._summaries[run_id].status == "blocked":
                # Marked waiting when it blocked; a delivery (a resume, an event) rather
                # than a scan may be what moves it on: clear the mark then too.
                session.waiting = True
            replaying: float | None = t0
        else:
            replaying = None
        if not await self._covers_deliveries(replay, session):
            replay.close()
            return "retry"

        def measured() -> None:
            if replaying is not None:
                self.metrics.replay_seconds.observe(time.perf_counter() - replaying)

        seen = len(session.deliveries)

        def more() -> bool:
            nonlocal seen
            grew, seen = len(session.deliveries) > seen, len(session.deliveries)
            return grew

        while True:
            try:
                decision = await self._driver.settle(replay, more=more, first_decision=measured)
            except Outdated:
                replay.close()
                raise
            if isinstance(decision, Blocked):
                error = decision.error
                if error.type == "NonDeterminismError":
                    logger.warning(
                        "run blocked", run_id=run_id, step=decision.step, error=error.message
                    )
                else:  # a bug in the job's code: where it was raised is what a fix needs
                    logger.error(
                        "run blocked",
                        run_id=run_id,
                        step=decision.step,
                        error=f"{error.type}: {error.message}",
                        at=where(error),
                    )
                replay.close()
                # Waits for other code without holding consumer capacity: a runner
                # that serves the job looks at it again when it starts.
                await self.log.mark_waiting(run_id, replay.job.name, "blocked")
                self.metrics.runs_blocked.labels(replay.job.name).inc()
                session.waiting = False
                return "done"
            if isinstance(decision, Finished):
                replay.close()
                self._cancel_fast(run_id)
                session.handled = len(session.deliveries)  # the run ended: nothing is late
                status = h.ended_as(replay.terminal or decision.entry)
                self.metrics.runs_ended.labels(replay.job.name, status).inc()
                ended = replay.terminal or decision.entry
                if isinstance(ended, h.RunFailed):
                    logger.error(
                        "run failed",
                        run_id=run_id,
                        job=replay.job.name,
                        step=replay.current_step,
                        error=f"{ended.error.type}: {ended.error.message[:LOGGED_CHARS]}",
                        at=where(ended.error),
                    )
                await self._moved_on(session)
                return "done"
            assert isinstance(decision, Park)  # with the log read to its end
            session.handled = seen
            await self._arm(replay, decision, session)
            self._remember(replay)
            await self._moved_on(session)
            return "parked"

    async def _moved_on(self, session: _Session) -> None:
        if session.waiting:
            session.waiting = False
            try:
                await self.log.clear_waiting(session.run_id)
            except JetlaneError as exc:  # a stale mark only costs a look at the next scan
                logger.info("waiting mark not cleared", run_id=session.run_id, error=str(exc))

    async def _covers_deliveries(self, replay: Replay, session: _Session) -> bool:
        """Whether what we read includes every delivered input (a lagging replica may
        serve a direct get without the message just delivered)."""
        for _ in range(5):
            newest = max((m.seq for m in session.deliveries), default=0)
            if newest <= replay.last_seq:
                return True
            await asyncio.sleep(0.05)
            await self._driver.ingest_tail(replay, journal=True)
        return False

    async def _catch_up(self, replay: Replay) -> Replay | None:
        tail = await self.log.read(replay.run_id, replay.last_seq)
        if any(m.direction == "out" and m.seq > replay.out_seq for m in tail) or (
            self.config.build_id is not None
            and any(
                isinstance(m.body, h.Pin) and m.body.build != self.config.build_id for m in tail
            )
        ):
            # Another runner wrote the journal, or the run was pinned to another build.
            replay.close()
            return None
        for msg in tail:
            self._driver.ingest(replay, msg)
        return replay

    def _summarize(self, replay: Replay, msg: h.Message) -> None:
        summary = self._summaries.get(replay.run_id)
        if summary is not None:
            update(summary, msg)

    def _appended(self, replay: Replay, body: h.Journal, seq: int) -> None:
        if isinstance(body, h.StepFailed) and body.retry_at is not None:
            self.metrics.for_job(replay.job.name).retries.inc()
        # No timestamp per step: the session stamps updated_at at its end.
        self._summarize(replay, h.Message(seq, replay.run_id, "out", "", body))

    async def _execute(self, replay: Replay, ex: Execute) -> Outcome:
        outcome = await self._steps.run(ex)
        counters = self.metrics.for_job(replay.job.name)
        counters.started.inc()
        (counters.completed if outcome.error is None else counters.failed).inc()
        counters.seconds.observe(outcome.duration_ms / 1000)
        if outcome.error is not None:
            # Bounded, and no exc_info: a renderer that prints locals would print every
            # secret and megabyte a failing step held.
            info = error_info(outcome.error)
            logger.error(
                "step attempt failed",
                run_id=replay.run_id,
                job=replay.job.name,
                step=ex.step,
                attempt=ex.attempt,
                error=f"{info.type}: {info.message[:LOGGED_CHARS]}",
                at=where(info),
            )
        return outcome

    # -- parked runs: cache and in-memory timers ------------------------------

    # -- waiting runs ---------------------------------------------------------

    # -- liveness -------------------------------------------------------------

    async def _heartbeat(self) -> None:
        interval = max(min(self.config.ack_wait, self.log.lease_ttl) / 3, 0.05)
        last_pending = 0.0
        while True:
            await asyncio.sleep(interval)
            self.metrics.sessions.set(len(self._tasks))
            self.metrics.cached.set(len(self._cache))
            now = time.monotonic()
            if now - last_pending >= 5.0:
                last_pending = now
                with contextlib.suppress(JetlaneError):  # a gauge: the next beat sets it
                    self.metrics.pending.set(await self.log.consumer_pending())
            for session in list(self._sessions.values()):
                for msg in session.deliveries:
                    await msg.keep_alive()
                async with session.lease_lock:
                    if session.lease is None:
                        continue  # released (or never taken)
                    try:
                        session.lease = await self.log.renew(session.run_id, self.id, session.lease)
                    except FenceLost as exc:  # expired and taken: the fence protects us
                        logger.warning("lease lost", run_id=session.run_id, error=str(exc))
                    except JetlaneError as exc:  # no answer: it may have been stored
                        session.lease_unsure = True
                        logger.warning(
                            "lease renewal failed", run_id=session.run_id, error=str(exc)
                        )
