"""Parked runs on a runner: the LRU cache of suspended handlers and the in-memory
timers that wake them. ``Runner`` methods, kept in a module of their own."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog

from ._core.replay import (
    Park,
    Replay,
)

if TYPE_CHECKING:
    from ._runner import Runner, _Session

logger = structlog.get_logger("jetlane.runner")

# A fired timer this far ahead of our clock is taken as our clock lagging the server's.
MAX_CLOCK_SKEW = 5.0


def _remember(runner: Runner, replay: Replay) -> None:
    runner._cache[replay.run_id] = replay
    while len(runner._cache) > runner.config.cache_size:
        _, old = runner._cache.popitem(last=False)
        old.close()
        if old is not replay:  # its session's end writes its index record, then evicts
            runner._summaries.pop(old.run_id, None)


def _evict(runner: Runner, run_id: str) -> None:
    runner._summaries.pop(run_id, None)
    replay = runner._cache.pop(run_id, None)
    if replay is not None:
        replay.close()


def _cancel_fast(runner: Runner, run_id: str) -> None:
    handle = runner._fast.pop(run_id, None)
    if handle is not None:
        handle.cancel()


async def _arm(runner: Runner, replay: Replay, park: Park, session: _Session) -> None:
    now = datetime.now(UTC)
    runner._cancel_fast(replay.run_id)
    soonest: float | None = None  # parallel branches may park on several timers
    for spec in park.timers:
        delay = (spec.fire_at - now).total_seconds()
        if spec.rearm:
            # Found parked after a replay: the schedule may be gone; a new one replaces it.
            await runner.log.schedule(replay.run_id, spec.token, spec.fire_at, spec.body)
        if 0 < delay <= MAX_CLOCK_SKEW and replay.fired(spec.token):
            # The server fired it, but our clock is a little behind: come back when
            # it is due, through the delivery (durable even if this process dies).
            # Further off, the timer was forged or orphaned: nothing to hold for.
            session.redeliver_in = delay + 0.01
        if delay <= runner.config.fast_timer_window:
            soonest = delay if soonest is None else min(soonest, delay)
    if soonest is not None:
        # Wakes the run here at the first fire_at (the schedule's fire is ~250 ms
        # coarse). It sends nothing: the core decides by the clock, and re-parks on
        # the others, arming the next.
        loop = asyncio.get_running_loop()
        runner._fast[replay.run_id] = loop.call_at(
            loop.time() + max(soonest, 0.0) + 0.002, runner._fire_fast, replay.run_id
        )


def _fire_fast(runner: Runner, run_id: str) -> None:
    runner._fast.pop(run_id, None)
    if not runner._stopping.is_set():
        runner._wake(run_id)
