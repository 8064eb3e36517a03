"""The run index at scale: ``python -m bench.index_scale --runs 1000000``.

Publishes N index records and N starts (no runs are run) into a fresh
embedded server, then times ``Client.list_runs`` (the first page, the next,
one from the middle, a filtered one) and ``Log.run_ids`` enumeration, with the
process's RSS. Every page reads the whole index (see ``RunIndex.list``): the
per-run figures are what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import resource
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from nats.js.api import PubAck

from jetlane import Client, ConnectOptions, Log, Names
from jetlane import wire as h
from jetlane._core.status import RunStatus
from jetlane._index import record
from jetlane.embedded import EmbeddedNats

T = TypeVar("T")
WINDOW = 20_000


def run_id(i: int) -> str:
    return f"run{i:07d}"


def status_of(i: int) -> RunStatus:
    return RunStatus(
        run_id=run_id(i),
        job=f"job{i % 10}",
        status=("completed", "failed", "sleeping", "queued")[i % 4],
        step="charge",
        created_at=f"2025-01-01T00:00:00.{i:09d}Z",
        updated_at="2025-01-02T00:00:00.000Z",
        history_length=7,
    )


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set of this process, MB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    current = pages * resource.getpagesize() / 2**20
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def messages(names: Names, runs: int) -> Iterator[tuple[str, bytes, dict[str, str] | None]]:
    start_headers = {h.KIND_HEADER: "start", h.VERSION_HEADER: h.VERSION}
    for i in range(runs):
        yield names.index(run_id(i)), record(status_of(i)), None
        body = h.encode(h.Start(job=f"job{i % 10}", input={"n": i}))
        yield names.inbox(run_id(i)), body, start_headers


async def load(log: Log, runs: int) -> None:
    acks: list[asyncio.Future[PubAck]] = []
    for subject, data, headers in messages(log.names, runs):
        acks.append(await log.js.publish_async(subject, data, headers=headers))
        if len(acks) >= WINDOW:
            await asyncio.gather(*acks)
            acks.clear()
    await asyncio.gather(*acks)


async def timed(what: str, runs: int, action: Callable[[], Awaitable[T]]) -> T:
    t0 = time.perf_counter()
    result = await action()
    seconds = time.perf_counter() - t0
    current, peak = rss_mb()
    print(
        f"{what:<34} {seconds:8.2f} s  {seconds / runs * 1e6:6.2f} µs/run  "
        f"rss {current:6.0f} MB (peak {peak:.0f})",
        flush=True,
    )
    return result


async def main(runs: int, limit: int) -> None:
    with tempfile.TemporaryDirectory(prefix="jetlane-index-scale-") as tmp:
        server = EmbeddedNats(tmp).start()
        try:
            log = await Log.open(ConnectOptions(url=server.url), Names())
            client = Client(log)
            print(f"{runs:,} runs, pages of {limit}", flush=True)
            await timed("load (index records + starts)", runs, lambda: load(log, runs))

            first, cursor = await timed(
                "list_runs: first page", runs, lambda: client.list_runs(limit=limit)
            )
            assert [s.run_id for s in first[:2]] == [run_id(runs - 1), run_id(runs - 2)]
            second, _ = await timed(
                "list_runs: second page", runs, lambda: client.list_runs(cursor=cursor, limit=limit)
            )
            assert second[0].run_id == run_id(runs - 1 - limit)
            middle = status_of(runs // 2)
            mid = base64.urlsafe_b64encode(f"{middle.created_at}|{middle.run_id}".encode())
            page, _ = await timed(
                "list_runs: a page from the middle",
                runs,
                lambda: client.list_runs(cursor=mid.decode(), limit=limit),
            )
            assert page[0].run_id == run_id(runs // 2 - 1)
            await timed(
                "list_runs: job + status filter",
                runs,
                lambda: client.list_runs(job="job3", status="sleeping", limit=limit),
            )

            async def enumerate_ids() -> int:
                count = 0
                async for _ in log.run_ids():
                    count += 1
                return count

            count = await timed("run_ids: enumerate all", runs, enumerate_ids)
            assert count == runs, count
            await log.close()
        finally:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--limit", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.limit))
