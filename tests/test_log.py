"""The log's own contract: stream checks, fencing, leases, batched reads."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from jetlane import ConnectOptions, JetlaneError, Log, Names, StreamMismatch
from jetlane import wire as h
from jetlane._nats.log import BATCH, FenceLost
from jetlane.embedded import EmbeddedNats

from .helpers import eventually


async def test_existing_stream_with_incompatible_settings_is_a_clear_error(
    nats_server: EmbeddedNats, names: Names
) -> None:
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().add_stream(
        StreamConfig(name=names.stream, subjects=[f"{names.prefix}.run.>"], allow_direct=False)
    )
    await nc.close()
    with pytest.raises(StreamMismatch) as info:
        await Log.open(ConnectOptions(url=nats_server.url), names)
    message = str(info.value)
    assert names.stream in message
    assert "allow_direct" in message and f"{names.stream}_TIMERS" in message
    assert f"{names.prefix}.dlq.>" in message


async def test_runs_stream_refuses_schedules_so_an_inbox_cannot_be_erased(log: Log) -> None:
    await log.publish_input("keep", h.Event(type="e", payload=1))
    headers = {
        h.KIND_HEADER: "event",
        "Nats-Schedule": "@at 2100-01-01T00:00:00Z",
        "Nats-Schedule-Target": log.names.journal("keep"),
    }
    with pytest.raises(JetlaneError, match="schedules is disabled"):
        await log._publish(log.names.inbox("keep"), b'{"type": "e"}', headers)
    assert [m.body.payload for m in await log.read("keep")] == [1]


async def test_open_twice_accepts_its_own_stream(log: Log, options: ConnectOptions) -> None:
    again = await Log.open(options, log.names)
    await again.close()


async def test_appends_are_fenced(log: Log) -> None:
    first = await log.append("f1", h.RunCompleted(output=1), 0)
    with pytest.raises(FenceLost):
        await log.append("f1", h.RunCompleted(output=2), 0)
    second = await log.append("f1", h.RunCompleted(output=3), first)
    assert second > first
    outs = [m.body.output for m in await log.read("f1")]
    assert outs == [1, 3]


async def test_lease_is_exclusive_and_released(log: Log) -> None:
    held = await log.acquire("l1", "a")
    assert held is not None
    assert await log.acquire("l1", "b") is None
    renewed = await log.renew("l1", "a", held)
    with pytest.raises(FenceLost):
        await log.renew("l1", "a", held)  # a stale renewal never overwrites
    await log.release("l1", held)  # a stale release does not free the current lease
    assert await log.acquire("l1", "b") is None
    await log.release("l1", renewed)
    assert await log.acquire("l1", "b") is not None


async def test_long_history_reads_in_batches(log: Log) -> None:
    total = BATCH * 2 + 17
    for i in range(total):
        await log.publish_input("long", h.Event(type="e", payload=i))
    history = await log.read("long")
    assert [m.body.payload for m in history] == list(range(total))
    tail = await log.read("long", after=history[-5].seq)
    assert [m.body.payload for m in tail] == list(range(total - 4, total))


async def test_an_input_fenced_on_the_journal_is_refused_once_an_entry_lands(log: Log) -> None:
    # What makes refusing events for ended runs exact: the client reads the journal's
    # last entry, and the event is stored only if no entry landed after it.
    start = await log.publish_input("jf", h.Start(job="j"), create_once=True)
    assert await log.last_entry("jf") is None
    entry = await log.append("jf", h.ValuesRecorded(values=[1]), start.seq)
    last = await log.last_entry("jf")
    assert last is not None and last.seq == entry and isinstance(last.body, h.ValuesRecorded)
    with pytest.raises(FenceLost):
        await log.publish_input("jf", h.Event(type="t"), journal_at=start.seq)
    stored = await log.publish_input("jf", h.Event(type="t"), journal_at=entry)
    assert [m.seq for m in await log.read("jf")] == [start.seq, entry, stored.seq]


# -- tails: a named ephemeral pull consumer per tail ------------------------------------


async def _tail_consumers(log: Log) -> list[str]:
    names = await log.js.consumers_info(log.names.stream)
    return [c.name for c in names if c.name.startswith("tail-")]


async def _collect(log: Log, subject: str, start: int, into: list[h.Message]) -> None:
    async for msg in log.tail(subject, start):
        into.append(msg)


async def test_a_tail_survives_a_server_restart_and_a_lost_consumer_exactly_once(
    tmp_path: Path, names: Names
) -> None:
    """Across a kill -9 of the server and a deletion of its consumer, a tail yields every
    message of the run once, in stream order, fired timers included."""
    server = EmbeddedNats(tmp_path / "tail").start()
    log = await Log.open(ConnectOptions(url=server.url), names)
    seen: list[h.Message] = []
    task: asyncio.Task[None] | None = None
    try:
        for n in range(3):
            await log.publish_input("t1", h.Event(type="e", payload=n))
        first = (await log.read("t1"))[1].seq  # the tail starts at the second message
        task = asyncio.create_task(_collect(log, names.run("t1"), first, seen))

        async def payloads(count: int) -> bool:
            return len(seen) >= count

        await eventually(lambda: payloads(2), what="the tail to catch up")
        [before] = await _tail_consumers(log)
        server.kill()
        server.start()

        async def publish(n: int) -> None:
            await log.publish_input("t1", h.Event(type="e", payload=n))

        await _retry(lambda: publish(3))  # published before the tail noticed the restart
        await eventually(lambda: payloads(3), timeout=20, what="the tail after the restart")
        [after] = await _tail_consumers(log)
        assert after != before  # a new consumer, under a new name
        await log.js.delete_consumer(names.stream, after)
        await publish(4)
        fire_at = datetime.now(UTC) + timedelta(milliseconds=200)
        await log.schedule("t1", "w", fire_at, h.Timer(timer="w"))
        await eventually(lambda: payloads(5), timeout=20, what="the tail after the deletion")
        history = await log.read("t1")
        assert [m.seq for m in seen] == [m.seq for m in history[1:]]
        assert [m.kind for m in seen] == ["event"] * 4 + ["timer"]
        assert [m.body.payload for m in seen[:4]] == [1, 2, 3, 4]
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await log.close()
        server.cleanup()


async def test_a_closed_tail_removes_its_consumer(log: Log) -> None:
    await log.publish_input("t2", h.Event(type="e", payload=0))
    tail = log.tail(log.names.run("t2"), 1)
    first = await anext(tail)
    assert first.body.payload == 0
    [name] = await _tail_consumers(log)
    assert len(name) == len("tail-") + 24  # tail-<96 random bits, hex>
    await tail.aclose()
    assert await _tail_consumers(log) == []


async def _retry(op: Callable[[], Awaitable[None]], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await op()
        except JetlaneError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_a_tail_pulls_past_one_batch_in_order(log: Log) -> None:
    from jetlane._nats.tail import BATCH as TAIL_BATCH

    total = TAIL_BATCH + 5
    for i in range(total):
        await log.publish_input("t3", h.Event(type="e", payload=i))
    tail = log.tail(log.names.run("t3"), 1)
    try:
        got = [(await anext(tail)).body.payload for _ in range(total)]
    finally:
        await tail.aclose()
    assert got == list(range(total))
