"""The run index: listing without replays, and a rebuild that equals the live index."""

from __future__ import annotations

import msgspec
import pytest

from jetlane import Client, Context, Failure, define_job, step

from .helpers import StartRunner, eventually


async def napper(ctx: Context, input: int) -> int:
    await step.do("one", lambda: input)
    if input % 3 == 0:
        await step.sleep("nap", "1h")
    if input % 3 == 1:
        raise Failure("odd one out")
    return input


JOB = define_job(name="indexed", handler=napper, register=False)


async def test_list_filters_pages_and_rebuild_matches(
    client: Client, start_runner: StartRunner
) -> None:
    await start_runner([JOB])
    for i in range(9):
        await client.start("indexed", i, run_id=f"ix{i}")
    await client.start("unserved", run_id="ix-queued")

    async def settled() -> bool:
        runs, _ = await client.list_runs(limit=100)
        return len(runs) == 10 and all(r.status != "running" for r in runs)

    await eventually(settled, timeout=20, what="index to settle")
    runs, cursor = await client.list_runs(limit=100)
    assert cursor is None
    by_id = {r.run_id: r.status for r in runs}
    assert by_id["ix-queued"] == "queued"
    assert [by_id[f"ix{i}"] for i in range(9)] == ["sleeping", "failed", "completed"] * 3
    failed, _ = await client.list_runs(status="failed")
    assert sorted(r.run_id for r in failed) == ["ix1", "ix4", "ix7"]
    assert all(r.error is not None and "odd one out" in r.error.message for r in failed)
    sleeping, _ = await client.list_runs(job="indexed", status="sleeping")
    assert all(r.until is not None for r in sleeping)

    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = await client.list_runs(limit=4, cursor=cursor)
        seen += [r.run_id for r in page]
        if cursor is None:
            break
    assert sorted(seen) == sorted(by_id) and len(seen) == len(set(seen))
    assert [r.run_id for r in runs] == seen  # newest first, stable across pages

    live = {r.run_id: msgspec.to_builtins(r) for r in runs}
    assert await client.rebuild_index() == 10
    rebuilt = {r.run_id: msgspec.to_builtins(r) for r in (await client.list_runs(limit=100))[0]}
    for record in [*live.values(), *rebuilt.values()]:
        record.pop("updated_at")  # the runner stamps its own clock; the rebuild the server's
        record.pop("history_length")
    assert rebuilt == live


async def test_parked_runs_are_indexed_with_no_run_cache(
    client: Client, start_runner: StartRunner
) -> None:
    # cache_size=0 is `jetlane dev` and `runner --replay-always`: a parked run is evicted
    # at once, and its index record must still be written.
    await start_runner([JOB], cache_size=0)
    await client.start("indexed", 3, run_id="nocache")

    async def indexed() -> bool:
        runs, _ = await client.list_runs(limit=10)
        return [(r.run_id, r.status) for r in runs] == [("nocache", "sleeping")]

    await eventually(indexed, timeout=20, what="the parked run in the index")


async def test_bad_cursor_is_a_clear_error(client: Client) -> None:
    with pytest.raises(ValueError, match="cursor"):
        await client.list_runs(cursor="not-base64!")
