"""The JetStream API prefix, and the tail a client under one uses (direct gets, no consumer).

The account layout that needs both is proven in tests/test_security.py; here the polled
tail runs on a plain server (it uses only direct gets, which any account has).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jetlane import ConfigError, ConnectOptions, JetlaneError, Log, Names
from jetlane import wire as h
from jetlane._nats.poll import PolledTail
from jetlane.cli import build_parser, connect_options
from jetlane.embedded import EmbeddedNats

from .helpers import eventually


async def _collect(tail: PolledTail, into: list[h.Message]) -> None:
    async for msg in tail.follow():
        into.append(msg)


async def _consumers(log: Log) -> list[str]:
    return [c.name for c in await log.js.consumers_info(log.names.stream)]


async def test_a_polled_tail_follows_a_run_once_in_order_across_a_restart(
    tmp_path: Path, names: Names
) -> None:
    """Inputs, journal entries and a fired timer, each once in stream order, across a
    kill -9 of the server; no consumer is made."""
    server = EmbeddedNats(tmp_path / "poll").start()
    log = await Log.open(ConnectOptions(url=server.url), names)
    seen: list[h.Message] = []
    task: asyncio.Task[None] | None = None
    try:
        for n in range(3):
            await log.publish_input("p1", h.Event(type="e", payload=n))
        first = (await log.read("p1"))[1].seq
        task = asyncio.create_task(_collect(PolledTail(log, names.run("p1"), first), seen))

        async def count(n: int) -> bool:
            return len(seen) >= n

        await eventually(lambda: count(2), what="the tail to catch up")
        server.kill()
        server.start()

        async def publish() -> None:
            await log.publish_input("p1", h.Event(type="e", payload=3))

        await eventually(_ok(publish), timeout=20, what="a publish after the restart")
        await eventually(lambda: count(3), timeout=20, what="the tail after the restart")
        last = (await log.read("p1"))[-1].seq
        await log.append("p1", h.RunStarted(build="b"), last)
        fire_at = datetime.now(UTC) + timedelta(milliseconds=200)
        await log.schedule("p1", "w", fire_at, h.Timer(timer="w"))
        await eventually(lambda: count(5), timeout=20, what="the entry and the fired timer")
        history = await log.read("p1")
        assert [m.seq for m in seen] == [m.seq for m in history[1:]]
        assert [m.kind for m in seen] == ["event"] * 3 + [h.kind_of(h.RunStarted()), "timer"]
        assert await _consumers(log) == []
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await log.close()
        server.cleanup()


def _ok(op: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[bool]]:
    async def attempt() -> bool:
        try:
            await op()
        except JetlaneError:
            return False
        return True

    return attempt


async def test_a_polled_tail_of_every_run_is_in_stream_order(log: Log) -> None:
    for n in range(4):
        await log.publish_input(f"a{n % 2}", h.Event(type="e", payload=n))
    tail = PolledTail(log, log.names.all_runs, 1).follow()
    try:
        got = [await anext(tail) for _ in range(4)]
        await log.publish_input("a2", h.Event(type="e", payload=4))
        got.append(await asyncio.wait_for(anext(tail), 10))
    finally:
        await tail.aclose()
    assert [(m.run_id, m.body.payload) for m in got] == [
        ("a0", 0),
        ("a1", 1),
        ("a0", 2),
        ("a1", 3),
        ("a2", 4),
    ]
    assert [m.seq for m in got] == sorted(m.seq for m in got)


async def test_the_default_api_subjects_are_unchanged(log: Log) -> None:
    stream = log.names.stream
    assert (log.api, log.prefixed) == ("$JS.API", False)
    assert log._direct == f"$JS.API.DIRECT.GET.{stream}"
    assert log._direct_leases == f"$JS.API.DIRECT.GET.{log.names.lease_stream}"
    assert log.js._prefix == "$JS.API"
    puller = log.puller(_nothing, _nothing)
    assert puller._next == f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{log.names.consumer}"


async def test_a_prefix_is_used_for_every_api_subject(log: Log) -> None:
    prefixed = Log(log.nc, log.names, api="$JS.jetlane.API")
    stream = log.names.stream
    assert prefixed.prefixed
    assert prefixed._direct == f"$JS.jetlane.API.DIRECT.GET.{stream}"
    assert prefixed._direct_waiting == f"$JS.jetlane.API.DIRECT.GET.{log.names.waiting_stream}"
    assert prefixed.js._prefix == "$JS.jetlane.API"
    puller = prefixed.puller(_nothing, _nothing)
    assert puller._next.startswith("$JS.jetlane.API.CONSUMER.MSG.NEXT.")


async def _nothing(*_: object) -> None:
    return None


@pytest.mark.parametrize("bad", ["", "$JS.*.API", "$JS.>", "$JS..API", "$JS API", "$JS.API."])
def test_a_bad_prefix_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="JetStream API prefix"):
        ConnectOptions(js_api_prefix=bad)


def test_the_cli_flag_and_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    assert connect_options(parser.parse_args(["status", "r"])).js_api_prefix is None
    args = parser.parse_args(["status", "r", "--js-api-prefix", "$JS.x.API"])
    assert connect_options(args).js_api_prefix == "$JS.x.API"
    monkeypatch.setenv("JETLANE_JS_API_PREFIX", "$JS.y.API")
    assert connect_options(build_parser().parse_args(["status", "r"])).js_api_prefix == "$JS.y.API"
