"""Runs that wait for a runner: unserved jobs, blocked runs, runs pinned to another
build (rolling upgrades). ``Runner`` methods, kept in a module of their own."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog

from ._core import history as h
from ._core.definition import Job
from ._core.durations import format_time
from ._core.errors import (
    FenceLost,
    NoResponders,
)
from ._core.status import summarize
from ._drive import Outdated
from ._index import record

if TYPE_CHECKING:
    from ._runner import Runner

logger = structlog.get_logger("jetlane.runner")


async def _unserved(runner: Runner, run_id: str, job: str, history: list[h.Message]) -> None:
    if runner.config.index:
        queued = summarize(run_id, history)
        if queued is not None and queued.status == "queued":
            queued.detail = None
            await runner.log.put_index(run_id, record(queued))
    logger.info(
        "no such job on this runner; the run waits for a runner that serves it",
        run_id=run_id,
        job=job,
    )
    await runner.log.mark_waiting(run_id, job, "unserved")


async def _ours(runner: Runner, run_id: str, job: Job, history: list[h.Message]) -> bool:
    """Whether a runner of our build may advance the run; a run no build owns yet
    is pinned to ours first (if it has no journal entry: a run in flight stays
    unpinned, as it was). ``history`` gets the ``run_started`` we append."""
    ours = runner.config.build_id
    pinned = h.pinned_build(history)
    if pinned == ours:
        return True
    if pinned is not None:
        await runner._foreign(run_id, job.name, pinned, history)
        return False
    if not any(m.direction == "out" for m in history):
        body = h.RunStarted(build=ours)
        try:
            seq = await runner.log.append(run_id, body, history[-1].seq)
        except FenceLost:  # an input came (or a runner of another build pinned it)
            raise Outdated("run_started") from None
        history.append(h.Message(seq, run_id, "out", "run_started", body))
    return True


async def _foreign(
    runner: Runner, run_id: str, job: str, build: str, history: list[h.Message]
) -> None:
    """A run pinned to another build: marked waiting for it, and its runners asked to
    take it; if none answers, adopted (``adopt_orphans``) or left for an operator."""
    await runner.log.mark_waiting(run_id, job, "build", build)
    try:
        await runner.log.ask(runner.log.names.wake(job, build), run_id.encode(), timeout=1.0)
        logger.info("run pinned to another build; its runners took it", run_id=run_id, build=build)
        return
    except (NoResponders, TimeoutError):
        pass  # no live runner of that build serves the job (drained, or gone)
    ours = runner.config.build_id
    if runner.config.adopt_orphans and ours is not None:
        reason = f"adopted by build {ours}: no live runner of build {build} serves {job}"
        await runner.log.publish_input(run_id, h.Pin(build=ours, reason=reason))
        await runner.log.clear_waiting(run_id)  # the pin's delivery takes it on
        logger.warning("run adopted", run_id=run_id, job=job, build=build, to=ours)
        return
    if runner.config.index:
        summary = summarize(run_id, history)
        if summary is not None:
            summary.updated_at = format_time(datetime.now(UTC))
            await runner.log.put_index(run_id, record(summary))
    logger.warning(
        "run waits for a runner of its build; none is live: start one, or re-pin it "
        "(jetlane runs pin RUN --build NEW)",
        run_id=run_id,
        job=job,
        build=build,
    )


async def _wake_waiting(runner: Runner) -> None:
    """Look for waiting runs of our jobs now (new code, or a job newly served) and
    every ``wake_interval`` (a wake-up lost in a race is found then)."""
    while True:
        try:
            count = 0
            async for run_id, job, why in runner.log.waiting_runs():
                if job in runner.jobs and runner._may_take(why):
                    while len(runner._tasks) >= runner.config.concurrency:
                        runner._slot.clear()  # thousands may wait: keep to our slots
                        await runner._slot.wait()
                    runner._wake(run_id, waiting=True)
                    count += 1
            if count:
                logger.info("woke waiting runs", runs=count)
        except Exception as exc:  # a failed scan must not stop the runner: next time
            logger.warning("scan of waiting runs failed", error=str(exc))
        await asyncio.sleep(runner.config.wake_interval)


def _may_take(runner: Runner, why: str) -> bool:
    """Whether a waiting run marked ``why`` is one for us to look at."""
    build = why.removeprefix("build:") if why.startswith("build:") else None
    return (
        build is None
        or runner.config.build_id in (None, build)
        or runner.config.adopt_orphans  # ours if its build has no live runner
    )
