"""A promise the invariant checker (I1) found broken under faults, pinned on its own.

A ``pause`` holds a run: inputs that arrive meanwhile are acted on after the
``resume`` (README, docs/protocol.md). The runner that received the pause keeps
that promise; a runner that replays the paused run afresh (the first one stopped,
was killed, or lost its lease) does not: its replay decides the wait (or an
invoke's ``child_result``) on the input that came during the pause, and the run
goes on while paused. Seen in ``test_invariants.py`` as ``steps-after-pause``
(``event_received`` or ``child_result`` after the pause).
"""

from __future__ import annotations

import asyncio
from typing import Any

from jetlane import Client, ConnectOptions, Context, Log, Names, Runner, define_job, step
from jetlane import wire as h

from ..helpers import StartRunner, eventually


async def waiter(ctx: Context, input: Any) -> Any:
    return await step.wait_for_event("go", type="go", timeout="10m")


async def settled(log: Log) -> bool:
    """The runners' consumer has nothing pending or in flight."""
    info = await log.js.consumer_info(log.names.stream, log.names.consumer)
    return int(info.num_pending or 0) == 0 and int(info.num_ack_pending or 0) == 0


async def test_a_fresh_replay_of_a_paused_run_holds_an_event_until_resume(
    client: Client, options: ConnectOptions, names: Names, start_runner: StartRunner
) -> None:
    job = define_job(name="waiter", handler=waiter, register=False)
    first_log = await Log.open(options, names, lease_ttl=5.0)
    first = Runner(first_log, {job.name: job})
    task = asyncio.create_task(first.run())
    try:
        await asyncio.wait_for(first.ready.wait(), 10)
        await client.start("waiter", run_id="pw1")

        async def waiting() -> bool:
            history = [m async for m in client.history("pw1")]
            return any(isinstance(m.body, h.WaitStarted) for m in history)

        await eventually(waiting, what="the wait to start")
        assert await client.pause("pw1")
        await eventually(lambda: settled(client.log), what="the pause to be taken in")
    finally:
        first.stop()
        await asyncio.wait_for(task, 15)
        await first_log.close()
    await client.send_event("pw1", "go", {"n": 1})
    await start_runner([job])  # replays the paused run afresh when the event comes
    await eventually(lambda: settled(client.log), what="the event to be taken in")
    history = [m async for m in client.history("pw1")]
    acted = [m.kind for m in history if isinstance(m.body, h.EventReceived | h.RunCompleted)]
    assert acted == [], f"acted on while paused: {acted}"
    assert await client.resume("pw1")
    assert await client.result("pw1", timeout=20) == {"n": 1}
