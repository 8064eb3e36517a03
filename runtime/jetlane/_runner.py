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
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg

from . import _history as h
from ._context import Plugins
from ._definition import Job, registry
from ._durations import format_time
from ._errors import DecodeError, InputError, JetlaneError
from ._index import record
from ._log import FenceLost, Log
from ._metrics import RunnerMetrics
from ._replay import (
    DEFAULT_MAX_PAYLOAD,
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
from ._status import RunStatus, summarize, update

log = structlog.get_logger("jetlane.runner")


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


class _Handback(Exception):
    """Draining: give the run back to the pool instead of starting another step."""


class StepTimeout(TimeoutError):
    """A step attempt ran past its ``timeout``."""


@dataclass
class _Session:
    run_id: str
    deliveries: list[Msg] = field(default_factory=list)
    handled: int = 0
    lease: int | None = None


class Runner:
    """Serves ``jobs`` from the pool's shared consumer until ``stop()``."""

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
        self.id = runner_id or f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self._sessions: dict[str, _Session] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cache: OrderedDict[str, Replay] = OrderedDict()
        self._fast: dict[str, asyncio.TimerHandle] = {}
        self._summaries: dict[str, RunStatus] = {}
        self.metrics = metrics or RunnerMetrics()
        self._job_metrics: dict[str, tuple[Any, Any, Any, Any, Any]] = {}
        self._stopping = asyncio.Event()
        self._slot = asyncio.Event()
        self.ready = asyncio.Event()
        self.stats = {"steps": 0, "sessions": 0, "fence_lost": 0, "dead_lettered": 0}

    def stop(self) -> None:
        """Stop pulling and drain (``run`` returns once in-flight sessions end)."""
        self._stopping.set()
        self._slot.set()

    async def run(self) -> None:
        """Pull and advance runs until ``stop()``; then drain."""
        sub = await self.log.runner_consumer(
            ack_wait=self.config.ack_wait, max_ack_pending=self.config.max_ack_pending
        )
        validators = await self._serve_validation()
        heartbeat = asyncio.create_task(self._heartbeat())
        self.ready.set()
        log.info("runner started", runner=self.id, jobs=sorted(self.jobs))
        try:
            while not self._stopping.is_set():
                free = self.config.concurrency - len(self._tasks)
                if free <= 0:
                    self._slot.clear()
                    await self._slot.wait()
                    continue
                try:
                    msgs = await sub.fetch(min(free, 256), timeout=1.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError):
                    await asyncio.sleep(0.25)
                    continue
                except Exception as exc:
                    log.warning("fetch failed", error=str(exc))
                    await asyncio.sleep(0.25)
                    continue
                for msg in msgs:
                    await self._dispatch(msg)
        finally:
            self.ready.clear()
            for sub_ in validators:
                with contextlib.suppress(Exception):
                    await sub_.unsubscribe()
            await self._drain()
            heartbeat.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            for handle in self._fast.values():
                handle.cancel()
            for replay in self._cache.values():
                replay.close()
            self._cache.clear()
            log.info("runner stopped", runner=self.id)

    async def _drain(self) -> None:
        if not self._tasks:
            return
        log.info("draining", sessions=len(self._tasks), timeout=self.config.drain_timeout)
        tasks = list(self._tasks.values())
        _, pending = await asyncio.wait(tasks, timeout=self.config.drain_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5.0)

    # -- deliveries -----------------------------------------------------------

    async def _dispatch(self, msg: Msg) -> None:
        names = self.log.names
        parsed = names.parse(msg.subject)
        seq = msg.metadata.sequence.stream
        run_id = parsed[0] if parsed else ""
        try:
            if parsed is None or not h.RUN_ID.fullmatch(run_id):
                raise DecodeError(f"subject {msg.subject!r} does not name a valid run id")
            h.decode((msg.headers or {}).get(h.KIND_HEADER), msg.data, direction="in")
        except DecodeError as exc:
            await self._dead_letter(msg, run_id, seq, str(exc))
            return
        session = self._sessions.get(run_id)
        if session is not None:
            session.deliveries.append(msg)
            return
        session = _Session(run_id, [msg])
        self._sessions[run_id] = session
        self._tasks[run_id] = asyncio.create_task(self._session(session))

    async def _dead_letter(self, msg: Msg, run_id: str, seq: int, reason: str) -> None:
        log.warning("dead-lettered input", run_id=run_id, seq=seq, reason=reason)
        self.stats["dead_lettered"] += 1
        self.metrics.dead_letters.inc()
        try:
            await self.log.dead_letter(run_id, seq, msg.subject, reason, msg.data)
        except Exception as exc:
            log.error("dead-letter write failed; will retry", seq=seq, error=str(exc))
            await msg.nak(delay=1.0)
            return
        await msg.term()

    async def _session(self, session: _Session) -> None:
        run_id = session.run_id
        self.stats["sessions"] += 1
        outcome = "retry"
        try:
            outcome = await self._advance(session)
        except FenceLost:
            self.stats["fence_lost"] += 1
            self.metrics.fence_conflicts.inc()
            log.info("fence lost; another runner advanced the run", run_id=run_id)
        except (asyncio.CancelledError, _Handback):
            outcome = "handback"
        except (TimeoutError, JetlaneError, OSError, nats.errors.Error) as exc:
            log.warning("advance failed; will retry", run_id=run_id, error=str(exc))
        except Exception:
            log.exception("advance crashed; will retry", run_id=run_id)
        finally:
            summary = self._summaries.get(run_id)
            if summary is not None and self.config.index:
                summary.updated_at = format_time(datetime.now(UTC))
                try:
                    await self.log.put_index(run_id, record(summary))
                except Exception as exc:
                    log.info("run index write failed", run_id=run_id, error=str(exc))
            if run_id not in self._cache:
                self._evict(run_id)  # only a parked run stays cached
            if session.lease is not None:
                with contextlib.suppress(Exception):
                    await self.log.release(run_id, session.lease)
            self._sessions.pop(run_id, None)
            self._tasks.pop(run_id, None)
            self._slot.set()
            # Deliveries that arrived after the session last read the log were not
            # seen by it: they start a session of their own.
            late = session.deliveries[session.handled :] if outcome == "parked" else []
            del session.deliveries[len(session.deliveries) - len(late) :]
            await self._settle(session, "done" if outcome == "parked" else outcome)
            for msg in late:
                if not self._stopping.is_set():
                    await self._dispatch(msg)
                else:
                    with contextlib.suppress(Exception):
                        await msg.nak()

    async def _settle(self, session: _Session, outcome: str) -> None:
        for msg in session.deliveries:
            with contextlib.suppress(Exception):
                if outcome == "done":
                    await msg.ack()
                elif outcome == "handback":
                    await msg.nak()
                else:
                    delivered = msg.metadata.num_delivered or 1
                    await msg.nak(delay=min(0.05 * 2 ** min(delivered, 8), 5.0))

    async def _advance(self, session: _Session) -> str:
        run_id = session.run_id
        session.lease = await self.log.acquire(run_id, self.id)
        if session.lease is None:
            return "retry"  # another runner holds the run; it reads the log before parking
        replay = self._cache.pop(run_id, None)
        if replay is not None:
            replay = await self._catch_up(replay)
        if replay is None:
            history = await self._history(session)
            start = next((m.body for m in history if isinstance(m.body, h.Start)), None)
            if start is None:
                for msg in session.deliveries:
                    seq = msg.metadata.sequence.stream
                    await self._dead_letter(msg, run_id, seq, f"run {run_id!r} has no start")
                session.deliveries.clear()
                return "done"
            job = self.jobs.get(start.job)
            if job is None:
                if self.config.index:
                    queued = summarize(run_id, history)
                    if queued is not None and queued.status == "queued":
                        queued.detail = None
                        await self.log.put_index(run_id, record(queued))
                log.info(
                    "no such job on this runner; leaving the run for one that has it",
                    run_id=run_id,
                    job=start.job,
                )
                return "retry"
            t0 = time.perf_counter()
            replay = Replay(job, run_id, plugins=self.plugins, max_payload=self.config.max_payload)
            for msg_ in history:
                replay.ingest(msg_)
            self.metrics.history_length.observe(len(history))
            self._summaries[run_id] = summarize(run_id, history) or RunStatus(
                run_id=run_id, job=start.job, status="queued"
            )
            replaying = t0
        else:
            replaying = None
        while True:
            decision = await self._drive(replay, session, replaying)
            replaying = None
            if isinstance(decision, Blocked):
                log.warning(
                    "run blocked", run_id=run_id, step=decision.step, error=decision.error.message
                )
                replay.close()
                return "retry"
            if isinstance(decision, Finished):
                replay.close()
                status = {h.RunCompleted: "completed", h.RunFailed: "failed"}.get(
                    type(decision.entry), "cancelled"
                )
                self.metrics.runs_ended.labels(replay.job.name, status).inc()
                return "done"
            # Park: read the log to its end first; an input may have come meanwhile.
            assert isinstance(decision, Park)
            seen = len(session.deliveries)
            if await self._ingest_tail(replay) or len(session.deliveries) > seen:
                continue
            session.handled = seen
            await self._arm(replay, decision)
            self._remember(replay)
            return "parked"

    async def _history(self, session: _Session) -> list[h.Message]:
        first = session.deliveries[0]
        if len(session.deliveries) == 1 and first.metadata.num_delivered == 1:
            start = self.log.decode_delivered(first)
            if isinstance(start.body, h.Start):
                # A start delivered for the first time: no runner has seen the run, so
                # its journal is empty (create-once). Inputs after it are read before
                # the run parks, or as soon as one is delivered (see _drive): no read now.
                return [start]
        return await self.log.read(session.run_id)

    async def _catch_up(self, replay: Replay) -> Replay | None:
        tail = await self.log.read(replay.run_id, replay.last_seq)
        if any(m.direction == "out" and m.seq > replay.out_seq for m in tail):
            replay.close()
            return None
        for msg in tail:
            self._ingest(replay, msg)
        return replay

    async def _ingest_tail(self, replay: Replay) -> bool:
        """Read inputs that came while we held the run; True when there were any.

        Only the inbox: the journal is ours while we hold the lease (the fence
        catches anyone else at our next append, the next session's catch-up after).
        """
        tail = await self.log.read_inputs(replay.run_id, replay.last_seq)
        for msg in tail:
            self._ingest(replay, msg)
        return bool(tail)

    def _ingest(self, replay: Replay, msg: h.Message) -> None:
        if msg.direction == "out" and msg.seq <= replay.out_seq:
            return  # our own append, already applied
        replay.ingest(msg)
        summary = self._summaries.get(replay.run_id)
        if summary is not None:
            update(summary, msg)

    async def _drive(
        self, replay: Replay, session: _Session, replaying: float | None = None
    ) -> Decision:
        reply: Any = None
        seen = len(session.deliveries)
        while True:
            decision = await replay.next(reply)
            if replaying is not None:
                # A full replay ends at the first decision: the frontier.
                self.metrics.replay_seconds.observe(time.perf_counter() - replaying)
                replaying = None
            await self._flush(replay)
            if not isinstance(decision, Execute):
                return decision
            if len(session.deliveries) > seen:
                # An input arrived while the run was moving: a cancel must stop a long
                # chain of steps before the next one starts, not at the next park.
                seen = len(session.deliveries)
                await self._ingest_tail(replay)
                if replay.cancel_pending:
                    decision = await replay.next(None)
                    await self._flush(replay)
                    return decision
            if self._stopping.is_set():
                # Draining: finish the step in flight, start no new one; another runner
                # continues from the log.
                raise _Handback
            reply = await self._execute(replay, decision)

    async def _flush(self, replay: Replay) -> None:
        outbox, replay.outbox = replay.outbox, []
        run_id = replay.run_id
        scheduled: list[asyncio.Future[Any]] = []
        try:
            for effect in outbox:
                if isinstance(effect, Append):
                    if isinstance(effect.body, h.StepFailed) and effect.body.retry_at is not None:
                        self._for_job(replay.job.name)[4].inc()
                    seq = await self.log.append(run_id, effect.body, replay.out_seq)
                    replay.appended(seq)
                    summary = self._summaries.get(run_id)
                    if summary is not None:
                        # No timestamp per step: the session stamps updated_at at its end.
                        update(summary, h.Message(seq, run_id, "out", "", effect.body))
                elif isinstance(effect, Schedule):
                    # Pipelined with the timer_set append that follows; its ack is
                    # checked before the flush ends, so before the run parks (and a
                    # schedule lost anyway is re-armed by whoever finds the run parked).
                    scheduled.append(
                        await self.log.send_schedule(
                            run_id, effect.token, effect.fire_at, effect.body
                        )
                    )
                elif isinstance(effect, Unschedule):
                    await self.log.unschedule(run_id, effect.token)
        except BaseException:
            for sent in scheduled:
                sent.cancel()  # the session is failing anyway; do not mask why
            raise
        for sent in scheduled:
            await self.log.confirm(sent)

    async def _execute(self, replay: Replay, ex: Execute) -> Outcome:
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        error: BaseException | None = None
        result: Any = None
        scope: asyncio.Timeout | None = None
        try:
            if ex.timeout is None:
                result = ex.fn()
                if inspect.isawaitable(result):
                    result = await result
            else:
                async with asyncio.timeout(ex.timeout) as scope:
                    result = ex.fn()
                    if inspect.isawaitable(result):
                        result = await result
        except TimeoutError as exc:
            if scope is not None and scope.expired():
                error = StepTimeout(
                    f"step {ex.step!r} attempt {ex.attempt} timed out after {ex.timeout:g}s"
                )
            else:
                error = exc
        except Exception as exc:
            error = exc
        duration = (time.perf_counter() - t0) * 1000
        self.stats["steps"] += 1
        started_c, completed_c, failed_c, seconds_h, _ = self._for_job(replay.job.name)
        started_c.inc()
        (completed_c if error is None else failed_c).inc()
        seconds_h.observe(duration / 1000)
        if error is not None:
            log.info(
                "step attempt failed",
                run_id=replay.run_id,
                job=replay.job.name,
                step=ex.step,
                attempt=ex.attempt,
                error=f"{type(error).__name__}: {error}",
            )
        return Outcome(started_at=started, duration_ms=duration, result=result, error=error)

    def _for_job(self, job: str) -> tuple[Any, Any, Any, Any, Any]:
        children = self._job_metrics.get(job)
        if children is None:
            m = self.metrics
            children = self._job_metrics[job] = (
                m.steps_started.labels(job),
                m.steps_completed.labels(job),
                m.steps_failed.labels(job),
                m.step_seconds.labels(job),
                m.retries.labels(job),
            )
        return children

    # -- parked runs: cache and in-memory timers ------------------------------

    def _remember(self, replay: Replay) -> None:
        self._cache[replay.run_id] = replay
        while len(self._cache) > self.config.cache_size:
            _, old = self._cache.popitem(last=False)
            old.close()
            self._summaries.pop(old.run_id, None)
            handle = self._fast.pop(old.run_id, None)
            if handle is not None:
                handle.cancel()

    def _evict(self, run_id: str) -> None:
        self._summaries.pop(run_id, None)
        replay = self._cache.pop(run_id, None)
        if replay is not None:
            replay.close()

    async def _arm(self, replay: Replay, park: Park) -> None:
        now = datetime.now(UTC)
        for spec in park.timers:
            delay = (spec.fire_at - now).total_seconds()
            if spec.rearm:
                # Found parked after a replay: the schedule may be gone; a new one replaces it.
                await self.log.schedule(replay.run_id, spec.token, spec.fire_at, spec.body)
            if delay <= self.config.fast_timer_window:
                old = self._fast.pop(replay.run_id, None)
                if old is not None:
                    old.cancel()
                loop = asyncio.get_running_loop()
                self._fast[replay.run_id] = loop.call_at(
                    loop.time() + max(delay, 0.0), self._fire_fast, replay.run_id, spec.body
                )

    def _fire_fast(self, run_id: str, body: h.Timer) -> None:
        self._fast.pop(run_id, None)
        if self._stopping.is_set():
            return
        task = asyncio.create_task(self._publish_timer(run_id, body))
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _publish_timer(self, run_id: str, body: h.Timer) -> None:
        # The durable schedule still fires later; that copy is ignored as consumed.
        try:
            await self.log.publish_input(run_id, body)
        except Exception as exc:
            log.info("fast timer publish failed; the durable timer will fire", error=str(exc))

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
                with contextlib.suppress(Exception):
                    self.metrics.pending.set(await self.log.consumer_pending())
            for session in list(self._sessions.values()):
                for msg in session.deliveries:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()
                if session.lease is not None:
                    try:
                        session.lease = await self.log.renew(session.run_id, self.id, session.lease)
                    except Exception as exc:
                        log.warning("lease renewal failed", run_id=session.run_id, error=str(exc))

    async def _serve_validation(self) -> list[Any]:
        subs = []
        for name, job in self.jobs.items():

            async def answer(msg: Msg, job: Job = job) -> None:
                reply: dict[str, Any]
                try:
                    job.validate_input(msgspec.json.decode(msg.data))
                    reply = {"ok": True}
                except InputError as exc:
                    reply = {"error": str(exc)}
                except msgspec.DecodeError:
                    reply = {"error": "input is not JSON"}
                with contextlib.suppress(Exception):
                    await msg.respond(msgspec.json.encode(reply))

            subject = f"{self.log.names.prefix}.api.validate.{name}"
            subs.append(await self.log.nc.subscribe(subject, queue="jetlane-runners", cb=answer))
        await self.log.nc.flush()  # the server knows the subscriptions before we say ready
        return subs
