from __future__ import annotations

import msgspec

from jetlane import Client, Context, define_job, step

from .conftest import StartRunner


class In(msgspec.Struct):
    n: int


async def count(ctx: Context, input: In) -> dict[str, int]:
    total = 0
    for i in range(input.n):
        total += await step.do("add", lambda i=i: i)
    await step.sleep("nap", 0.3)
    got = await step.wait_for_event("go", type="go", timeout="10s")
    return {"total": total, "got": got["x"]}


JOB = define_job(name="count", handler=count, register=False)


async def test_smoke(client: Client, start_runner: StartRunner) -> None:
    await start_runner([JOB])
    await client.start("count", {"n": 5}, run_id="r1")
    await client.send_event("r1", "go", {"x": 7})
    assert await client.result("r1", timeout=10) == {"total": 10, "got": 7}
    kinds = [m.kind async for m in client.history("r1")]
    print(kinds)
