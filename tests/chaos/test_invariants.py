"""The promises under faults: a seeded nemesis, real runners, a real nats-server, a checker.

Three runner processes serve the ``invariants`` job while the nemesis SIGKILLs
and SIGSTOPs them, SIGKILLs and restarts the server, and deletes the runners'
consumer; each run's timeline adds forged timers, raw and duplicate starts,
events before the start, cancels, pauses and resumes. Some runs start a child
run (invoked, or detached), which is started again on purpose; each child named
by a journal is read and checked like any run, and against its parent (I7). Then every history, the
effect log and the dead letters are checked against the invariants of
``checker.py``. One figures line says what ran; every violation is printed,
and any fails the test.

    JETLANE_CHAOS_MINUTES   minutes of faults; unset: a small run (~20 s of faults,
                            part of ``make test``); ``make chaos``: 10
    JETLANE_TEST_SEED       replay a seed (each run prints its own)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import msgspec
import pytest

from jetlane import ConnectOptions, Log, Names
from jetlane import wire as h
from jetlane.embedded import EmbeddedNats

from .checker import (
    INVARIANTS,
    Execution,
    Sent,
    Tally,
    Violation,
    check_dead_letters,
    check_run,
    parse_effects,
)
from .jobs import EFFECT_LOG, child_budget
from .nemesis import Nemesis, Pool
from .workload import PUBLISH_DEADLINE, Workload, children_of, draw_plan

pytestmark = pytest.mark.slow

MINUTES = float(os.environ.get("JETLANE_CHAOS_MINUTES") or 0)
WORK = MINUTES * 60 if MINUTES > 0 else 20.0
SETTLE = 60.0 if MINUTES > 0 else 20.0
RUNNERS = 3
LEASE = 2.0


@pytest.fixture
def seed() -> int:
    """The run's seed (as the ``rng`` fixture draws it); printed so a failure can be replayed."""
    value = int(os.environ.get("JETLANE_TEST_SEED", random.randrange(2**32)))
    print(f"random seed: JETLANE_TEST_SEED={value}")
    return value


def _figures(counts: Mapping[str, int]) -> str:
    return ",".join(f"{k}:{v}" for k, v in sorted(counts.items())) or "-"


async def _settle(workload: Workload, timeout: float) -> set[str]:
    """Wait (bounded) for every run that should end to end, child runs included (every
    child ends: it waits for nothing, and an invoked one is cancelled with its parent);
    the ones that did not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {r for r, s in workload.sent.items() if s.starts and s.expect_end}
    parents = {r for r, s in workload.sent.items() if s.starts}
    known: set[str] = set()
    while (pending or parents) and loop.time() < deadline:
        for run_id in sorted(pending | parents):
            with contextlib.suppress(Exception):
                history = await workload.read(run_id)
                parents.discard(run_id)
                for started in children_of(history):
                    if started.run_id not in known:
                        known.add(started.run_id)
                        pending.add(started.run_id)
                if any(isinstance(m.body, h.TERMINAL) for m in history):
                    pending.discard(run_id)
        if pending or parents:
            await asyncio.sleep(0.5)
    return pending


async def _audit(workload: Workload, stop: asyncio.Event, rng: random.Random) -> None:
    """Read random histories while the faults go on: earlier reads for the append-only check."""
    while not stop.is_set():
        if workload.sent:
            with contextlib.suppress(Exception):
                await workload.read(rng.choice(sorted(workload.sent)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.3)


async def _fired(log: Log, run_id: str) -> dict[int, str]:
    """Inputs the runs stream sourced from the timers stream: seq -> the schedule that fired."""
    fired = {}
    async for raw in log.read_raw(log.names.inbox(run_id)):
        headers = raw.headers or {}
        if headers.get("Nats-Stream-Source", "").startswith(f"{log.names.timers_stream} "):
            fired[int(headers["Nats-Sequence"])] = headers.get("Nats-Scheduler", "")
    return fired


async def _dead_letters(log: Log) -> list[dict[str, object]]:
    return [
        msgspec.json.decode(raw.data) async for raw in log.read_raw(f"{log.names.prefix}.dlq.>")
    ]


@pytest.mark.timeout(WORK + SETTLE + PUBLISH_DEADLINE + 180)
async def test_invariants_hold_under_faults(
    tmp_path: Path, seed: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    effect_log = tmp_path / "effects.jsonl"
    monkeypatch.setenv(EFFECT_LOG, str(effect_log))  # the runner processes inherit it
    server = EmbeddedNats(tmp_path / "nats").start()
    names = Names("inv", "INV")
    log: Log | None = None
    pool: Pool | None = None
    try:
        log = await Log.open(ConnectOptions(url=server.url), names, lease_ttl=LEASE)
        flags = {"ack_wait": 2.0, "lease_ttl": LEASE}
        pool = Pool(server.url, names, tmp_path / "executions.txt", RUNNERS, flags)
        faults: Counter[str] = Counter()
        workload = Workload(log, faults)
        nemesis = Nemesis(
            random.Random(f"{seed}:nemesis"), server, pool, log, lease_ttl=LEASE, faults=faults
        )
        plans = random.Random(f"{seed}:plans")
        stop = asyncio.Event()
        chaos = asyncio.create_task(nemesis.run(stop))
        audit = asyncio.create_task(_audit(workload, stop, random.Random(f"{seed}:audit")))
        drivers: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + WORK
        while loop.time() < end:
            run_id = f"i{len(drivers)}"
            rng = random.Random(f"{seed}:{run_id}")
            drivers.append(asyncio.create_task(workload.drive(run_id, draw_plan(plans), rng)))
            await asyncio.sleep(plans.uniform(0.15, 0.6))
        stop.set()
        await chaos
        await audit
        done, late = await asyncio.wait(drivers, timeout=PUBLISH_DEADLINE + 15)
        for task in late:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                raise AssertionError("a run's driver crashed") from task.exception()
        stuck = await _settle(workload, SETTLE)
        await pool.shutdown()  # nothing moves while the final state is read

        earlier = {r: list(v) for r, v in workload.snapshots.items()}
        executions, bad_lines = parse_effects(effect_log.read_bytes().splitlines())
        by_run: dict[str, list[Execution]] = {}
        for execution in executions:
            by_run.setdefault(execution.run_id, []).append(execution)
        tally = Tally()
        violations: list[Violation] = []
        spawned: Counter[str] = Counter()  # child runs, invoked or detached
        ended = 0
        histories = {r: await workload.read(r) for r in sorted(workload.sent)}
        # Each child run its parent's journal names is read and checked like any run.
        children: dict[str, list[h.Message]] = {}
        child_sent: dict[str, Sent] = {}
        for history in histories.values():
            for begun in children_of(history):
                child = children[begun.run_id] = await workload.read(begun.run_id)
                sent = child_sent[begun.run_id] = workload.child_sent(begun.run_id)
                start = next((m.body for m in child if isinstance(m.body, h.Start)), None)
                if start is not None and isinstance(start.input, dict):
                    sent.budget = child_budget(start.input)
                spawned["detached" if begun.detached else "invoked"] += 1
        for run_id, history in [*histories.items(), *children.items()]:
            ended += any(isinstance(m.body, h.TERMINAL) for m in history)
            violations += check_run(
                history,
                by_run.get(run_id, []),
                run_id=run_id,
                names=names,
                sent=workload.sent.get(run_id) or child_sent[run_id],
                fired=await _fired(log, run_id),
                earlier=earlier.get(run_id, []),
                tally=tally,
                children=children,
                sent_to=child_sent,
            )
        violations += check_dead_letters(await _dead_letters(log), workload.malformed, tally)
    finally:
        if pool is not None:
            await pool.shutdown()
        if log is not None:
            await log.close()
        server.cleanup()

    started = sum(bool(s.starts) for s in workload.sent.values())
    by_invariant = Counter(v.invariant for v in violations)
    line = (
        f"invariants: seed={seed} faults_for={WORK:.0f}s runs={len(workload.sent)} "
        f"started={started} children={_figures(spawned)} ended={ended} not_ended={len(stuck)} "
        f"executions={len(executions)} faults={_figures(faults)} "
        f"checks={sum(tally.counts.values())} ({_figures(tally.counts)}) "
        f"violations={len(violations)} ({_figures(by_invariant)})"
    )
    report = tmp_path / "violations.txt"
    violations.sort(key=lambda v: (v.invariant, v.kind, v.run_id))
    report.write_text("".join(f"{v}\n" for v in violations))
    dump = tmp_path / "histories.jsonl"  # the histories of the runs that broke a promise
    with dump.open("wb") as out:
        for run_id in sorted({v.run_id for v in violations}):
            for msg in [*histories.get(run_id, []), *children.get(run_id, [])]:
                out.write(msgspec.json.encode(msg.to_json()) + b"\n")
    kinds: dict[tuple[str, str], list[Violation]] = {}
    for violation in violations:
        kinds.setdefault((violation.invariant, violation.kind), []).append(violation)
    with capsys.disabled():
        print(f"\n{line}")
        for violation in violations:
            print(f"  {violation}")
        for (invariant, kind), found in sorted(kinds.items()):
            print(f"  {invariant}: {kind}: {len(found)}, e.g. {found[0]}")
        if bad_lines:
            print(f"  ({bad_lines} unreadable effect-log lines)")
        if violations:
            print(f"  replay: JETLANE_TEST_SEED={seed}; violations also in {report}, ")
            print(f"  the histories of those runs in {dump}")
    assert faults["runner_sigkill"] + faults["server_sigkill"] + faults["runner_sigstop"] > 0
    assert set(tally.counts) == set(INVARIANTS), tally.counts
    assert not violations, f"{len(violations)} violations (JETLANE_TEST_SEED={seed}): {line}"
