"""The run index and run enumeration past the server's page limits.

Regressions: listing broke above 1,000 runs (a ``multi_last`` direct get,
whose ``start_seq`` the server ignores: 1,001-1,024 runs looped for ever,
1,025+ failed with 413), and ``run_ids`` stopped at 100,000 runs (stream info
answers at most 100,000 subjects a request). Records and starts are written
straight to the streams: no runs are run.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable

import msgspec
import pytest
from nats.js.api import PubAck

from jetlane import Client, Log, Names
from jetlane._core.status import RunStatus
from jetlane._index import RunIndex, _Best, record
from jetlane._nats.scan import subjects


async def publish_all(log: Log, messages: Iterable[tuple[str, bytes]]) -> None:
    """Publish and wait for every ack (4,000 in flight at most)."""
    acks: list[asyncio.Future[PubAck]] = []
    for subject, data in messages:
        acks.append(await log.js.publish_async(subject, data))
    await asyncio.gather(*acks)


def status_of(i: int, *, rewritten: bool = False) -> RunStatus:
    # Two runs share each creation time: the run id breaks the tie.
    return RunStatus(
        run_id=f"run{i:05d}",
        job=("alpha", "beta")[i % 2],
        status="completed" if rewritten else ("completed", "failed", "sleeping")[i % 3],
        step="rewritten" if rewritten else "s",
        created_at=f"2025-01-01T{i // 2 // 3600:02d}:{i // 2 // 60 % 60:02d}:{i // 2 % 60:02d}Z",
        updated_at="2025-01-01T12:00:00Z",
    )


async def pages(client: Client, limit: int, **filters: str) -> list[RunStatus]:
    seen: list[RunStatus] = []
    cursor = None
    while True:
        page, cursor = await client.list_runs(limit=limit, cursor=cursor, **filters)
        assert len(page) == limit or cursor is None
        seen += page
        if cursor is None:
            return seen


@pytest.mark.parametrize("count", [1010, 1030])
async def test_listing_pages_past_a_thousand_runs(
    client: Client, log: Log, names: Names, rng: random.Random, count: int
) -> None:
    # Fails before the fix: 1,010 runs looped for ever, 1,030 failed with a 413.
    order = list(range(count))
    rng.shuffle(order)  # stream order is not creation order
    await publish_all(log, ((names.index(f"run{i:05d}"), record(status_of(i))) for i in order))
    rewritten = set(rng.sample(range(count), 25))  # their first records are deleted
    await publish_all(
        log, ((names.index(f"run{i:05d}"), record(status_of(i, rewritten=True))) for i in rewritten)
    )
    expected = [status_of(i, rewritten=i in rewritten) for i in range(count)]
    expected.sort(key=lambda s: (s.created_at, s.run_id), reverse=True)

    async with asyncio.timeout(20):
        for limit in (50, 1000):
            assert await pages(client, limit) == expected
        first, cursor = await client.list_runs()
        assert first == expected[:50] and cursor is not None
        chosen = [s for s in expected if s.job == "beta" and s.status == "failed"]
        assert await pages(client, 7, job="beta", status="failed") == chosen


async def test_a_run_rewritten_during_the_scan_comes_again_and_none_is_missed(
    log: Log, names: Names
) -> None:
    count = 2500  # three batches: the third is not asked for until the first is read
    await publish_all(
        log, ((names.index(f"run{i:05d}"), record(status_of(i))) for i in range(count))
    )
    seen: list[tuple[str, int, bytes]] = []
    async for value in log.read_index():
        if not seen:  # "run00003" was read; "run02400" is in the third batch: both rewritten
            await publish_all(
                log,
                (
                    (names.index(f"run{i:05d}"), record(status_of(i, rewritten=True)))
                    for i in (3, 2400)
                ),
            )
        seen.append((value.subject.rpartition(".")[2], value.seq, value.data))
    runs = [run for run, _, _ in seen]
    assert set(runs) == {f"run{i:05d}" for i in range(count)}
    assert len(runs) == count + 1 and runs.count("run00003") == 2
    latest = {run: data for run, _, data in sorted(seen, key=lambda v: v[1])}
    for i in (3, 2400):
        assert msgspec.json.decode(latest[f"run{i:05d}"])["step"] == "rewritten"
    # ... and the listing shows each run once, with its newer record.
    listed, _ = await RunIndex(log).list(limit=1000, status="completed")
    assert [s.run_id for s in listed].count("run00003") == 1
    assert {s.run_id: s.step for s in listed}["run00003"] == "rewritten"


def test_best_keeps_the_newest_record_of_a_run_and_spares_for_dropped_ones() -> None:
    best = _Best(3)
    for i in range(6):
        best.offer(i, status_of(i))
    assert [s.run_id for s in best.descending()] == ["run00005", "run00004", "run00003"]
    best.discard("run00004")  # a newer record of run00004 came and does not qualify
    best.discard("run00001")  # not kept: nothing to do
    assert [s.run_id for s in best.descending()] == ["run00005", "run00003"]
    best.offer(9, status_of(4, rewritten=True))
    assert [(s.run_id, s.step) for s in best.descending()] == [
        ("run00005", "s"),
        ("run00004", "rewritten"),
        ("run00003", "s"),
    ]


async def test_run_ids_past_the_server_page_of_100000_subjects(log: Log, names: Names) -> None:
    # Fails before the fix: run_ids stopped at exactly 100,000.
    count = 100_050
    ids = [f"r{i:06d}" for i in range(count)]
    await publish_all(log, ((names.inbox(run_id), b"{}") for run_id in ids))
    async with asyncio.timeout(20):
        found = [run_id async for run_id in log.run_ids()]
        assert found == ids  # sorted, each once

        # Subjects removed between two pages shift later ones back across the page
        # boundary: the next page starts far enough back not to skip them.
        scan = subjects(log, names.stream, names.all_inboxes, overlap=10)
        listed = [await anext(scan)]  # the first page (100,000 subjects) is read
        for run_id in ids[1:51]:
            await log.js.purge_stream(names.stream, subject=names.inbox(run_id))
        listed += [subject async for subject in scan]
        assert listed == [names.inbox(run_id) for run_id in ids]
