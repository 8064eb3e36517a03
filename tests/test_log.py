"""The log's own contract: stream checks, fencing, leases, batched reads."""

from __future__ import annotations

import nats
import pytest
from nats.js.api import StreamConfig

from jetlane import ConnectOptions, JetlaneError, Log, Names, StreamMismatch
from jetlane import wire as h
from jetlane._nats.log import BATCH, FenceLost
from jetlane.embedded import EmbeddedNats


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
